//! Volume and volume-snapshot operations beyond create/delete (upstream `VolumeBase`,
//! `VolumeSnapshotTreeBase` and their API interceptors): ChangeVolumeState, UpdateVolume,
//! UpdateVolumeSnapshot, RecoverDataVolume, RevertVolumeFromSnapshot, ResizeRootVolume,
//! ResizeDataVolume and GetVmAttachableDataVolume.
//!
//! On simulator hosts these change the database only. A volume with a file on a KVM host:
//! a revert replaces its file with a copy of the snapshot's (by the host agent, install path
//! kept); a resize grows the file (`qemu-img resize` when its VM is stopped, QMP
//! `block_resize` when it runs).

use crate::api::{boxed, ApiDef, Msg, Reply, HOURS};
use crate::db::Val;
use crate::error::{Error, Result};
use crate::hostagent::{KvmAgentClient, PROTOCOL_VERSION};
use crate::params::Param;
use crate::query::{self};
use crate::util::now_ms;
use crate::App;
use rzstack_api::agent::VolumeRevertCmd;
use serde::Deserialize;
use serde_json::Value;
use sqlx::Row;

use super::vm::VM;
use super::volume::{VOLUME, VOLUME_SNAPSHOT};

fn not_found(def: &crate::query::ResourceDef, uuid: &str) -> Error {
    Error::not_found(format!("invalid field[uuid], resource[uuid:{uuid}, type:{}] not found", def.vo))
}

/// The agent of the KVM host holding a volume's file: its VM's (current, else last) host;
/// for a volume without a VM, the LocalStorage host its file is on, else the first KVM host
/// of a cluster its primary storage is attached to. None when the volume has no file or it
/// is not on a KVM host (simulator hosts).
async fn kvm_agent_of(app: &App, volume: &str) -> Result<Option<KvmAgentClient>> {
    let sql = "SELECT h.management_ip, h.password FROM volume v JOIN host h ON h.hypervisor_type = 'KVM' AND ( \
         h.uuid = (SELECT COALESCE(m.host_uuid, m.last_host_uuid) FROM vm_instance m \
                   WHERE m.uuid = COALESCE(v.vm_instance_uuid, v.last_vm_instance_uuid)) \
         OR h.uuid = (SELECT r.host_uuid FROM local_storage_resource_ref r WHERE r.resource_uuid = v.uuid) \
         OR h.cluster_uuid IN (SELECT c.cluster_uuid FROM primary_storage_cluster_ref c \
                   JOIN primary_storage p ON p.uuid = c.primary_storage_uuid \
                   WHERE c.primary_storage_uuid = v.primary_storage_uuid AND p.type != 'LocalStorage')) \
         WHERE v.uuid = $1 AND v.install_path LIKE '/%' \
         ORDER BY CASE WHEN h.uuid = (SELECT COALESCE(m.host_uuid, m.last_host_uuid) FROM vm_instance m \
                   WHERE m.uuid = COALESCE(v.vm_instance_uuid, v.last_vm_instance_uuid)) THEN 0 ELSE 1 END, h.uuid";
    let Some(r) = app.db.fetch_optional(sql, &[Val::from(volume)]).await? else { return Ok(None) };
    let ip: String = r.try_get(0)?;
    let token: Option<String> = r.try_get(1)?;
    Ok(Some(KvmAgentClient::new(&ip, token.as_deref().unwrap_or_default())))
}

// ---------------------------------------------------------------- ChangeVolumeState

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChangeVolumeState {
    uuid: String,
    state_event: String,
}

async fn change_volume_state(app: App, msg: Msg) -> Result<Reply> {
    let req: ChangeVolumeState = msg.parse()?;
    let uuid = req.uuid.as_str();
    let row = app
        .db
        .fetch_optional("SELECT type, status FROM volume WHERE uuid = $1", &[Val::from(uuid)])
        .await?
        .ok_or_else(|| not_found(&VOLUME, uuid))?;
    let ty: String = row.try_get(0)?;
    let status: String = row.try_get(1)?;
    if ty == "Root" {
        return Err(Error::operr(format!("it's not allowed to change state of root volume, uuid:{uuid}")));
    }
    if status == "Deleted" {
        return Err(Error::operr(format!("the volume[uuid:{uuid}] is in status of deleted, cannot do the operation")));
    }
    let state = super::enable_disable(&req.state_event);
    app.db
        .execute(
            "UPDATE volume SET state = $1, last_op_date = $2 WHERE uuid = $3 AND type != 'Root' AND status != 'Deleted'",
            &[Val::from(state), Val::I(now_ms()), Val::from(uuid)],
        )
        .await?;
    super::inventory_reply(&app, &VOLUME, uuid).await
}

// ---------------------------------------------------------------- UpdateVolume / UpdateVolumeSnapshot

async fn update_volume(app: App, msg: Msg) -> Result<Reply> {
    let uuid = super::update_name_description(&app, &msg, &VOLUME, true).await?;
    super::inventory_reply(&app, &VOLUME, &uuid).await
}

async fn update_volume_snapshot(app: App, msg: Msg) -> Result<Reply> {
    let uuid = super::update_name_description(&app, &msg, &VOLUME_SNAPSHOT, true).await?;
    super::inventory_reply(&app, &VOLUME_SNAPSHOT, &uuid).await
}

// ---------------------------------------------------------------- RecoverDataVolume

async fn recover_data_volume(app: App, msg: Msg) -> Result<Reply> {
    let uuid = msg.str("uuid").unwrap_or_default().to_string();
    // Deleted → Ready when the volume was instantiated (it has a file or its size is held on
    // a primary storage), else NotInstantiated; in one statement guarded by the status.
    let n = app
        .db
        .execute(
            "UPDATE volume SET status = CASE WHEN install_path IS NOT NULL OR primary_storage_uuid IS NOT NULL \
             THEN 'Ready' ELSE 'NotInstantiated' END, last_op_date = $1 WHERE uuid = $2 AND status = 'Deleted'",
            &[Val::I(now_ms()), Val::from(uuid.as_str())],
        )
        .await?;
    if n == 0 {
        return Err(Error::operr(format!(
            "the volume[uuid:{uuid}] is not in status of deleted. This is operation is to recover a deleted data volume"
        )));
    }
    super::inventory_reply(&app, &VOLUME, &uuid).await
}

// ---------------------------------------------------------------- RevertVolumeFromSnapshot

async fn revert_volume_from_snapshot(app: App, msg: Msg) -> Result<Reply> {
    let snap = msg.str("uuid").unwrap_or_default().to_string();
    let s = snap.as_str();
    let row = app
        .db
        .fetch_optional(
            "SELECT s.name, s.state, s.status, s.volume_uuid, s.tree_uuid, s.primary_storage_install_path, \
             v.uuid, v.vm_instance_uuid, v.install_path, v.size, v.primary_storage_uuid \
             FROM volume_snapshot s LEFT JOIN volume v ON v.uuid = s.volume_uuid WHERE s.uuid = $1",
            &[Val::from(s)],
        )
        .await?
        .ok_or_else(|| not_found(&VOLUME_SNAPSHOT, s))?;
    let name: String = row.try_get(0)?;
    let state: String = row.try_get(1)?;
    let status: String = row.try_get(2)?;
    let snap_file: Option<String> = row.try_get(5)?;
    let volume: Option<String> = row.try_get(6)?;
    let vm: Option<String> = row.try_get(7)?;
    let vol_file: Option<String> = row.try_get(8)?;
    let vol_size: i64 = row.try_get::<Option<i64>, _>(9)?.unwrap_or(0);
    let ps: Option<String> = row.try_get(10)?;
    if state != "Enabled" {
        return Err(Error::operr(format!("volume snapshot[uuid:{s}] is in state {state}, cannot revert volume to it")));
    }
    let Some(volume) = volume else {
        return Err(Error::operr(format!(
            "original volume for snapshot[uuid:{s}] has been deleted, cannot revert volume to it"
        )));
    };
    if status != "Ready" {
        return Err(Error::code(
            rzstack_api::codes::VOLUME_SNAPSHOT_1000,
            format!(
                "snapshot[uuid:{s}, name:{name}]'s status[{status}] is not allowed for message\
                 [org.zstack.header.storage.snapshot.APIRevertVolumeFromSnapshotMsg], allowed status[Ready]"
            ),
        ));
    }
    if let Some(vm) = &vm {
        let vm_state = app
            .db
            .fetch_optional("SELECT state FROM vm_instance WHERE uuid = $1", &[Val::from(vm.as_str())])
            .await?
            .map(|r| r.try_get::<String, _>(0))
            .transpose()?;
        if let Some(st) = vm_state.filter(|st| st != "Stopped") {
            return Err(Error::operr(format!(
                "unable to reset volume[uuid:{volume}] to snapshot[uuid:{s}], the vm[uuid:{vm}] volume attached to \
                 is not in Stopped state, current state is {st}"
            )));
        }
    }
    // A volume with a file on a KVM host: its file is replaced with an independent qcow2 copy
    // of the snapshot (the snapshot's file can still be deleted on its own), by the host agent.
    let mut new_file: Option<(String, i64)> = None;
    if let (Some(sf), Some(vf)) = (snap_file.filter(|p| p.starts_with('/')), vol_file.filter(|p| p.starts_with('/'))) {
        if let Some(agent) = kvm_agent_of(&app, &volume).await? {
            let cmd = VolumeRevertCmd { version: PROTOCOL_VERSION, snapshot_install_path: sf, install_path: vf };
            let info = agent.revert_volume(&cmd).await.map_err(|e| {
                Error::operr(format!(
                    "failed to revert volume[uuid:{volume}] to snapshot[uuid:{s}] on its KVM host: {e}"
                ))
            })?;
            new_file = Some((info.install_path, info.size));
        }
    }
    let now = now_ms();
    let mut tx = app.db.begin_write().await?;
    if let Some((path, size)) = &new_file {
        // a volume grown since the snapshot goes back to the snapshot's size: the difference
        // returns to its primary storage
        let size = if *size > 0 { *size } else { vol_size };
        let back = (vol_size - size).max(0);
        tx.execute(
            "UPDATE volume SET install_path = $1, size = $2, reserved_size = CASE WHEN reserved_size > 0 \
             THEN reserved_size - $3 ELSE reserved_size END, last_op_date = $4 WHERE uuid = $5",
            &[Val::from(path.as_str()), Val::I(size), Val::I(back), Val::I(now), Val::from(volume.as_str())],
        )
        .await?;
        if let (Some(ps), true) = (&ps, back != 0) {
            tx.execute(
                "UPDATE primary_storage SET available_capacity = available_capacity + $1, last_op_date = $2 \
                 WHERE uuid = $3",
                &[Val::I(back), Val::I(now), Val::from(ps.as_str())],
            )
            .await?;
            super::primary_storage::return_for_volume(&mut tx, &volume, back).await?;
            tx.execute(
                "UPDATE local_storage_resource_ref SET size = size - $1, last_op_date = $2 WHERE resource_uuid = $3",
                &[Val::I(back), Val::I(now), Val::from(volume.as_str())],
            )
            .await?;
        }
    } else {
        tx.execute("UPDATE volume SET last_op_date = $1 WHERE uuid = $2", &[Val::I(now), Val::from(volume.as_str())])
            .await?;
    }
    // the reverted-to snapshot becomes the volume's latest (CreateVolumeSnapshot takes the
    // volume's latest as the parent: the next snapshot is its child, in its tree)
    tx.execute(
        "UPDATE volume_snapshot SET latest = 0, last_op_date = $1 WHERE latest = 1 AND volume_uuid = $2 AND uuid != $3",
        &[Val::I(now), Val::from(volume.as_str()), Val::from(s)],
    )
    .await?;
    tx.execute(
        "UPDATE volume_snapshot SET latest = 1, last_op_date = $1 WHERE uuid = $2",
        &[Val::I(now), Val::from(s)],
    )
    .await?;
    tx.commit().await?;
    Ok(Reply::empty())
}

// ---------------------------------------------------------------- ResizeRootVolume / ResizeDataVolume

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Resize {
    uuid: Option<String>,
    vm_instance_uuid: Option<String>,
    size: i64,
}

async fn resize_root_volume(app: App, msg: Msg) -> Result<Reply> {
    let req: Resize = msg.parse()?;
    let uuid = match (&req.uuid, &req.vm_instance_uuid) {
        (Some(u), _) => u.clone(),
        (None, Some(vm)) => app
            .db
            .fetch_optional("SELECT root_volume_uuid FROM vm_instance WHERE uuid = $1", &[Val::from(vm.as_str())])
            .await?
            .map(|r| r.try_get::<Option<String>, _>(0))
            .transpose()?
            .flatten()
            .ok_or_else(|| Error::operr(format!("the vm[uuid:{vm}] has no root volume")))?,
        (None, None) => return Err(Error::argerr("either uuid or vmInstanceUuid must be set")),
    };
    resize(&app, &uuid, req.size, "Root").await
}

async fn resize_data_volume(app: App, msg: Msg) -> Result<Reply> {
    let req: Resize = msg.parse()?;
    let uuid = req.uuid.unwrap_or_default();
    resize(&app, &uuid, req.size, "Data").await
}

async fn resize(app: &App, uuid: &str, size: i64, want: &str) -> Result<Reply> {
    let row = app
        .db
        .fetch_optional(
            "SELECT v.type, v.state, v.status, v.size, v.primary_storage_uuid, v.install_path, v.vm_instance_uuid, \
             m.state FROM volume v LEFT JOIN vm_instance m ON m.uuid = v.vm_instance_uuid WHERE v.uuid = $1",
            &[Val::from(uuid)],
        )
        .await?
        .ok_or_else(|| not_found(&VOLUME, uuid))?;
    let ty: String = row.try_get(0)?;
    let state: String = row.try_get(1)?;
    let status: String = row.try_get(2)?;
    let old: i64 = row.try_get::<Option<i64>, _>(3)?.unwrap_or(0);
    let ps: Option<String> = row.try_get(4)?;
    let file: Option<String> = row.try_get(5)?;
    let vm: Option<String> = row.try_get(6)?;
    let vm_state: Option<String> = row.try_get(7)?;
    if ty != want {
        return Err(Error::operr(format!("the volume[uuid:{uuid}] is not a {want} volume, its type is {ty}")));
    }
    if state == "Disabled" {
        return Err(Error::operr(format!("can not resize volume[{uuid}], because volume state is Disabled")));
    }
    if status == "Deleted" {
        return Err(Error::operr(format!("the volume[uuid:{uuid}] is in status of deleted, cannot do the operation")));
    }
    if size < old {
        return Err(Error::operr(format!("Cannot shrink [{ty}] volume[uuid:{uuid}]'s size")));
    }
    // qemu-img and QEMU grow to whole 512-byte sectors
    let size = size.saturating_add(511) / 512 * 512;
    let grow = size - old;
    if grow <= 0 {
        return super::inventory_reply(app, &VOLUME, uuid).await;
    }
    if let Some(st) = vm_state.as_deref().filter(|s| !matches!(*s, "Stopped" | "Running")) {
        return Err(Error::operr(format!(
            "resize volume[uuid: {uuid}] failed: the vm[uuid:{}] is {st}, not Running or Stopped",
            vm.as_deref().unwrap_or_default()
        )));
    }
    let instantiated = status == "Ready" && ps.is_some();
    let short = |ps: &str| {
        Error::operr(format!(
            "resize volume[uuid: {uuid}] failed: the primary storage[uuid:{ps}] has less than {grow} bytes available"
        ))
    };
    // 1. a first look at the capacity (the UPDATE below is what holds it)
    if let (true, Some(ps)) = (instantiated, &ps) {
        let enough = app
            .db
            .fetch_optional(
                "SELECT 1 FROM primary_storage WHERE uuid = $1 AND available_capacity >= $2",
                &[Val::from(ps.as_str()), Val::I(grow)],
            )
            .await?
            .is_some();
        if !enough {
            return Err(short(ps));
        }
    }
    // 2. the file on its KVM host (idempotent: growing to the size it has is success), no
    // transaction open meanwhile
    if let Some(f) = file.filter(|p| p.starts_with('/')) {
        if let Some(agent) = kvm_agent_of(app, uuid).await? {
            let cmd = rzstack_api::agent::VolumeResizeCmd {
                version: PROTOCOL_VERSION,
                install_path: f,
                size,
                vm_uuid: vm.filter(|_| vm_state.as_deref() == Some("Running")),
            };
            agent
                .resize_volume(&cmd)
                .await
                .map_err(|e| Error::operr(format!("resize volume[uuid: {uuid}] failed: {e}")))?;
        }
    }
    // 3. capacity and rows in one transaction: the capacity taken atomically, the volume's size
    // guarded by the size read above (a replay after it committed finds nothing to grow)
    let now = now_ms();
    let mut tx = app.db.begin_write().await?;
    if let (true, Some(ps)) = (instantiated, &ps) {
        let n = tx
            .execute(
                "UPDATE primary_storage SET available_capacity = available_capacity - $1, last_op_date = $2 \
                 WHERE uuid = $3 AND available_capacity >= $1",
                &[Val::I(grow), Val::I(now), Val::from(ps.as_str())],
            )
            .await?;
        if n == 0 {
            return Err(short(ps));
        }
        super::primary_storage::reserve_for_volume(&mut tx, uuid, grow).await?;
    }
    let n = tx
        .execute(
            "UPDATE volume SET size = $1, reserved_size = CASE WHEN $2 = 1 THEN reserved_size + $3 ELSE reserved_size END, \
             last_op_date = $4 WHERE uuid = $5 AND size = $6",
            &[Val::I(size), Val::I(i64::from(instantiated)), Val::I(grow), Val::I(now), Val::from(uuid), Val::I(old)],
        )
        .await?;
    if n == 0 {
        return Err(Error::operr(format!("volume[uuid:{uuid}] changed while resizing, try again")));
    }
    tx.execute(
        "UPDATE local_storage_resource_ref SET size = size + $1, last_op_date = $2 WHERE resource_uuid = $3",
        &[Val::I(grow), Val::I(now), Val::from(uuid)],
    )
    .await?;
    tx.commit().await?;
    super::inventory_reply(app, &VOLUME, uuid).await
}

// ---------------------------------------------------------------- GetVmAttachableDataVolume

async fn get_vm_attachable_data_volume(app: App, msg: Msg) -> Result<Reply> {
    let vm = msg.str("vmInstanceUuid").unwrap_or_default().to_string();
    let row = app
        .db
        .fetch_optional("SELECT state, platform FROM vm_instance WHERE uuid = $1", &[Val::from(vm.as_str())])
        .await?
        .ok_or_else(|| not_found(&VM, &vm))?;
    let state: String = row.try_get(0)?;
    let platform: Option<String> = row.try_get(1)?;
    if state != "Stopped" && state != "Running" {
        return Err(Error::operr(format!(
            "vm[uuid:{vm}] can only attach volume when state is Running or Stopped, current state is {state}"
        )));
    }
    let mut invs = Vec::new();
    // a VM of platform Other takes volumes only when stopped
    if state == "Stopped" || platform.as_deref() != Some("Other") {
        // an admin sees every volume, another account its own
        let admin = msg.account_uuid() == crate::identity::ADMIN_UUID;
        let own = |n: u8| {
            if admin {
                String::new()
            } else {
                format!(" AND v.uuid IN (SELECT resource_uuid FROM account_resource_ref WHERE account_uuid = ${n})")
            }
        };
        // Ready, Enabled, free data volumes on a primary storage attached to the VM's cluster; for
        // a VM without a cluster, on an Enabled and Connected primary storage attached to every
        // Enabled cluster its root volume's storage is attached to. Then the NotInstantiated ones.
        let sql = format!(
            "SELECT v.uuid FROM volume v WHERE v.type = 'Data' AND v.state = 'Enabled' AND v.status = 'Ready' \
             AND v.vm_instance_uuid IS NULL AND v.format IS NOT NULL{} AND ( \
               v.primary_storage_uuid IN (SELECT r.primary_storage_uuid FROM primary_storage_cluster_ref r \
                 JOIN vm_instance m ON m.cluster_uuid = r.cluster_uuid WHERE m.uuid = $1) \
               OR (EXISTS (SELECT 1 FROM vm_instance m WHERE m.uuid = $1 AND m.cluster_uuid IS NULL) \
                 AND v.primary_storage_uuid IN (SELECT p.uuid FROM primary_storage p \
                   WHERE p.state = 'Enabled' AND p.status = 'Connected' AND NOT EXISTS ( \
                     SELECT 1 FROM cluster c JOIN primary_storage_cluster_ref rc ON rc.cluster_uuid = c.uuid \
                     JOIN volume root ON root.primary_storage_uuid = rc.primary_storage_uuid \
                     JOIN vm_instance m ON m.root_volume_uuid = root.uuid \
                     WHERE m.uuid = $1 AND c.state = 'Enabled' AND NOT EXISTS ( \
                       SELECT 1 FROM primary_storage_cluster_ref x WHERE x.cluster_uuid = c.uuid \
                       AND x.primary_storage_uuid = p.uuid)) \
                   AND EXISTS (SELECT 1 FROM primary_storage_cluster_ref rc JOIN volume root \
                     ON root.primary_storage_uuid = rc.primary_storage_uuid JOIN vm_instance m \
                     ON m.root_volume_uuid = root.uuid WHERE m.uuid = $1)))) \
             ORDER BY v.create_date, v.uuid",
            own(2)
        );
        let not_instantiated = format!(
            "SELECT v.uuid FROM volume v WHERE v.type = 'Data' AND v.state = 'Enabled' \
             AND v.status = 'NotInstantiated'{} ORDER BY v.create_date, v.uuid",
            own(1)
        );
        for (q, with_vm) in [(sql, true), (not_instantiated, false)] {
            let mut vals = Vec::new();
            if with_vm {
                vals.push(Val::from(vm.as_str()));
            }
            if !admin {
                vals.push(Val::from(msg.account_uuid()));
            }
            for r in app.db.fetch_all(&q, &vals).await? {
                let u: String = r.try_get(0)?;
                if let Some(inv) = query::get(&app.db, &VOLUME, &u).await? {
                    invs.push(inv);
                }
            }
        }
    }
    let mut schema = serde_json::Map::new();
    for (i, inv) in invs.iter().enumerate() {
        query::schema_for(&VOLUME, &format!("inventories[{i}]"), inv, &mut schema);
    }
    let mut body = serde_json::Map::new();
    body.insert("inventories".into(), Value::Array(invs.into_iter().map(Value::Object).collect()));
    Ok(Reply { body, schema })
}

pub static APIS: &[ApiDef] = &[
    ApiDef::action("ChangeVolumeState", "/volumes/{uuid}/actions")
        .params(&[
            Param::str("uuid").required().resource(&VOLUME),
            Param::str("stateEvent").required().values(&["enable", "disable"]),
        ])
        .handler(|a, m| boxed(change_volume_state(a, m))),
    ApiDef::action("UpdateVolume", "/volumes/{uuid}/actions")
        .params(&[
            Param::str("uuid").required().resource(&VOLUME),
            Param::str("name").max(255),
            Param::str("description").max(2048),
        ])
        .handler(|a, m| boxed(update_volume(a, m))),
    ApiDef::action("RecoverDataVolume", "/volumes/{uuid}/actions")
        .params(&[Param::str("uuid").required().resource(&VOLUME)])
        .handler(|a, m| boxed(recover_data_volume(a, m))),
    ApiDef::action("UpdateVolumeSnapshot", "/volume-snapshots/{uuid}/actions")
        .params(&[
            Param::str("uuid").required().resource(&VOLUME_SNAPSHOT),
            Param::str("name").max(255),
            Param::str("description").max(2048),
        ])
        .handler(|a, m| boxed(update_volume_snapshot(a, m))),
    ApiDef::action("RevertVolumeFromSnapshot", "/volume-snapshots/{uuid}/actions")
        .timeout(24 * HOURS)
        .params(&[Param::str("uuid").required().resource(&VOLUME_SNAPSHOT)])
        .handler(|a, m| boxed(revert_volume_from_snapshot(a, m))),
    ApiDef::action("ResizeRootVolume", "/volumes/resize/{uuid}/actions")
        .params(&[
            Param::str("uuid").resource(&VOLUME),
            Param::str("vmInstanceUuid").resource(&VM),
            Param::int("size").required(),
        ])
        .handler(|a, m| boxed(resize_root_volume(a, m))),
    ApiDef::action("ResizeDataVolume", "/volumes/data/resize/{uuid}/actions")
        .params(&[Param::str("uuid").required().resource(&VOLUME), Param::int("size").required()])
        .handler(|a, m| boxed(resize_data_volume(a, m))),
    ApiDef::get("GetVmAttachableDataVolume", "/vm-instances/{vmInstanceUuid}/data-volume-candidates")
        .params(&[Param::str("vmInstanceUuid").required().resource(&VM)])
        .handler(|a, m| boxed(get_vm_attachable_data_volume(a, m))),
];
