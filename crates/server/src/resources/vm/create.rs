//! The create handlers: CreateVmInstance, CreateVmInstanceFromVolumeSnapshot, resourceUuid retries.

use super::*;

// ---------------------------------------------------------------------------------------
// Handlers

pub(super) async fn create_vm(app: App, msg: Msg) -> Result<Reply> {
    let req: CreateVm = msg.parse()?;
    create(app, msg, req).await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct FromSnapshot {
    pub(super) volume_snapshot_uuid: String,
    pub(super) primary_storage_uuid: Option<String>,
}

/// The snapshot a VM is made from: Ready and Enabled; its size is that of the snapshotted
/// volume (the snapshot row's own size when the volume is gone).
pub(super) async fn snapshot_source(app: &App, uuid: &str) -> Result<SnapSrc> {
    let row = one_row(
        app,
        "SELECT s.status, s.state, s.size, s.format, v.size, v.actual_size, v.root_image_uuid, v.vm_instance_uuid \
         FROM volume_snapshot s LEFT JOIN volume v ON v.uuid = s.volume_uuid WHERE s.uuid = $1",
        uuid,
    )
    .await?
    .ok_or_else(|| Error::not_found(format!("volume snapshot[uuid:{uuid}] is not found")))?;
    let status: String = row.try_get(0)?;
    let state: String = row.try_get(1)?;
    if status != "Ready" {
        return Err(Error::operr(format!(
            "volume snapshot[uuid:{uuid}] is not Ready, its status is {status}, can't create vm from it"
        )));
    }
    if state == "Disabled" {
        return Err(Error::operr(format!("volume snapshot[uuid:{uuid}] is Disabled, can't create vm from it")));
    }
    let snap_size: i64 = row.try_get(2)?;
    let vol_size: Option<i64> = row.try_get(4)?;
    let size = vol_size.filter(|s| *s > 0).unwrap_or(snap_size);
    if size <= 0 {
        return Err(Error::operr(format!(
            "cannot tell the size of volume snapshot[uuid:{uuid}]: its volume is gone, can't create vm from it"
        )));
    }
    let mut src = SnapSrc {
        uuid: uuid.to_string(),
        size,
        actual_size: row.try_get::<Option<i64>, _>(5)?.unwrap_or(0),
        format: opt_str(&row, 3)?,
        image: opt_str(&row, 6)?,
        ..SnapSrc::default()
    };
    let vm: Option<String> = opt_str(&row, 7)?;
    if let Some(vm) = vm {
        if let Some(r) =
            one_row(app, "SELECT platform, guest_os_type, architecture FROM vm_instance WHERE uuid = $1", &vm).await?
        {
            src.platform = opt_str(&r, 0)?;
            src.guest_os_type = opt_str(&r, 1)?;
            src.architecture = opt_str(&r, 2)?;
        }
        src.virtio = app
            .db
            .fetch_optional(
                "SELECT 1 FROM system_tag WHERE resource_uuid = $1 AND tag = 'driver::virtio'",
                &[Val::from(vm.as_str())],
            )
            .await?
            .is_some();
    }
    if let Some(img) = src.image.clone() {
        if let Some(r) =
            one_row(app, "SELECT platform, guest_os_type, architecture, virtio FROM image WHERE uuid = $1", &img)
                .await?
        {
            src.platform = src.platform.or(opt_str(&r, 0)?);
            src.guest_os_type = src.guest_os_type.or(opt_str(&r, 1)?);
            src.architecture = src.architecture.or(opt_str(&r, 2)?);
            src.virtio = src.virtio || r.try_get::<i64, _>(3)? != 0;
        }
    }
    Ok(src)
}

/// CreateVmInstanceFromVolumeSnapshot: CreateVmInstance's checks and saga, with a root volume
/// that is a copy of the snapshot (sized as the snapshotted volume, its capacity reserved on
/// the chosen primary storage like any root volume); the snapshot itself is not touched.
pub(super) async fn create_vm_from_snapshot(app: App, msg: Msg) -> Result<Reply> {
    let parsed: CreateVm = msg.parse()?;
    let f: FromSnapshot = msg.parse()?;
    // only this API's own parameters (upstream APICreateVmInstanceFromVolumeSnapshotMsg)
    let mut req = CreateVm {
        name: parsed.name,
        description: parsed.description,
        instance_offering_uuid: parsed.instance_offering_uuid,
        cpu_num: parsed.cpu_num,
        memory_size: parsed.memory_size,
        reserved_memory_size: parsed.reserved_memory_size,
        l3_network_uuids: parsed.l3_network_uuids,
        ty: parsed.ty,
        zone_uuid: parsed.zone_uuid,
        cluster_uuid: parsed.cluster_uuid,
        host_uuid: parsed.host_uuid,
        primary_storage_uuid_for_root_volume: f.primary_storage_uuid,
        vm_nic_params: parsed.vm_nic_params,
        default_l3_network_uuid: parsed.default_l3_network_uuid,
        strategy: parsed.strategy,
        platform: parsed.platform,
        root_volume_system_tags: parsed.root_volume_system_tags,
        ..CreateVm::default()
    };
    // a replay or a retry whose VM exists answers with it, whatever became of the snapshot
    if let Some(r) = existing_vm(&app, &msg).await? {
        return Ok(r);
    }
    req.snapshot = Some(snapshot_source(&app, &f.volume_snapshot_uuid).await?);
    create(app, msg, req).await
}

/// The canonical form of a value: object keys sorted, null members dropped (absent and null
/// parameters mean the same), recursively.
pub(super) fn canonical(v: &Value) -> Value {
    match v {
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.iter().filter(|(_, x)| !x.is_null()).map(|(k, _)| k).collect();
            keys.sort();
            let mut m = serde_json::Map::new();
            for k in keys {
                m.insert(k.clone(), canonical(&o[k.as_str()]));
            }
            Value::Object(m)
        }
        Value::Array(a) => Value::Array(a.iter().map(canonical).collect()),
        x => x.clone(),
    }
}

/// What makes two create requests "the same": the API and its validated fields (body, URL
/// variables, tags, resourceUuid) in canonical JSON; headers and the job uuid play no part.
pub(super) fn request_fingerprint(msg: &Msg) -> String {
    let mut m = serde_json::Map::new();
    m.insert("api".into(), Value::String(msg.api.clone()));
    m.insert("fields".into(), Value::Object(msg.fields.clone()));
    canonical(&Value::Object(m)).to_string()
}

/// The VM a create with this resourceUuid already made, answered as it is now: on a replay
/// (after unwinding what the earlier attempt left unfinished) or when the request is the same
/// as the one that created it. Another request reusing the uuid is refused (SYS.1007).
pub(super) async fn existing_vm(app: &App, msg: &Msg) -> Result<Option<Reply>> {
    let uuid = msg.resource_uuid();
    if msg.replay {
        saga::unwind_for_job(app, &msg.job_uuid).await?;
    } else if !matches!(msg.fields.get("resourceUuid"), Some(Value::String(_))) {
        // a first attempt without resourceUuid: the uuid was made when the job was accepted,
        // no VM can have it yet
        return Ok(None);
    }
    let Some(row) = app
        .db
        .fetch_optional("SELECT create_request FROM vm_instance WHERE uuid = $1", &[Val::from(uuid.as_str())])
        .await?
    else {
        return Ok(None);
    };
    let stored: Option<String> = row.try_get(0)?;
    if msg.replay || stored.as_deref() == Some(request_fingerprint(msg).as_str()) {
        return reply(app, &uuid).await.map(Some);
    }
    Err(Error::argerr(format!(
        "resourceUuid[{uuid}] is already used by vm instance[uuid:{uuid}] that was created with different \
         parameters; retry with the same parameters to get that vm, or use another resourceUuid"
    )))
}

pub(super) async fn create(app: App, msg: Msg, mut req: CreateVm) -> Result<Reply> {
    let uuid = msg.resource_uuid();
    // actions on the new VM wait until its creation ends
    let _turn = queue::turn(&uuid).await;
    if let Some(r) = existing_vm(&app, &msg).await? {
        return Ok(r);
    }
    let mut ctx = check_and_plan(&app, &msg, &mut req).await?;
    ctx.request = Some(request_fingerprint(&msg));
    let def = if ctx.strategy == "JustCreate" { &JUST_CREATE } else { &CREATE_VM };
    if let Err(e) = saga::run(&app, def, &msg.job_uuid, &uuid, ctx).await {
        // a concurrent create with this resourceUuid won the insert: answer as a retry would
        // (its VM when the request is the same, SYS.1007 when not)
        if let Some(r) = existing_vm(&app, &Msg { replay: false, ..msg.clone() }).await? {
            return Ok(r);
        }
        let cause = e.to_error_code();
        let details = cause.details.clone().unwrap_or_default();
        return Err(Error::Api(ErrorCode::new(rzstack_api::codes::SYS_1006, details).with_cause(cause)));
    }
    reply(&app, &uuid).await
}
