//! The creation saga: its context, its steps and their undos (host, primary storage, volumes,
//! CD-ROM, instantiate, finish).

use super::*;

// ---------------------------------------------------------------------------------------
// The saga

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct DataVol {
    pub(super) uuid: String,
    pub(super) size: i64,
    pub(super) offering: Option<String>,
    /// a DataVolumeTemplate image the volume is made from
    #[serde(default)]
    pub(super) image: Option<String>,
    #[serde(default)]
    pub(super) actual: i64,
    /// system tags for this volume only (dataVolumeSystemTagsOnIndex, diskAOs)
    #[serde(default)]
    pub(super) tags: Vec<String>,
    /// a diskAO's name for the volume
    #[serde(default)]
    pub(super) name: Option<String>,
    /// an existing volume (diskAOs sourceUuid) attached as it is: nothing created or reserved
    #[serde(default)]
    pub(super) adopt: bool,
    /// goes on the VM's `primaryStorageUuidForDataVolume::` storage ([`Ctx::data_ps`]): the
    /// volumes of dataDiskOfferingUuids and dataDiskSizes, as upstream
    #[serde(default)]
    pub(super) on_data_ps: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Nic {
    pub(super) uuid: String,
    pub(super) l3: String,
    /// a static IP (`staticIp::` tag)
    #[serde(default)]
    pub(super) ip: Option<String>,
    /// a custom MAC (`customMac::` tag or vmNicParams), lower-cased
    #[serde(default)]
    pub(super) mac: Option<String>,
    /// vmNicParams: driver type, state (enable|disable), metadata
    #[serde(default)]
    pub(super) driver: Option<String>,
    #[serde(default)]
    pub(super) state: Option<String>,
    #[serde(default)]
    pub(super) meta_data: Option<String>,
}

/// Everything the creation saga needs, ids included; stored with its progress.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Ctx {
    pub(super) vm_uuid: String,
    pub(super) name: String,
    pub(super) description: Option<String>,
    pub(super) account_uuid: String,
    pub(super) zone_uuid: Option<String>,
    pub(super) cluster_uuid: Option<String>,
    pub(super) designated_host: Option<String>,
    pub(super) image_uuid: Option<String>,
    pub(super) instance_offering_uuid: Option<String>,
    pub(super) cpu_num: i64,
    pub(super) cpu_speed: i64,
    pub(super) memory_size: i64,
    pub(super) reserved_memory_size: Option<i64>,
    pub(super) platform: Option<String>,
    pub(super) guest_os_type: Option<String>,
    pub(super) architecture: Option<String>,
    pub(super) vm_type: String,
    pub(super) allocator_strategy: String,
    pub(super) strategy: String,
    pub(super) hypervisors: Vec<String>,
    pub(super) primary_storage_for_root: Option<String>,
    pub(super) root_volume_uuid: String,
    pub(super) root_size: i64,
    pub(super) root_actual_size: i64,
    pub(super) root_disk_offering: Option<String>,
    /// the root volume is an existing volume (boot diskAO with sourceUuid), attached as it is
    #[serde(default)]
    pub(super) root_from_volume: bool,
    /// the boot diskAO's name for the root volume
    #[serde(default)]
    pub(super) root_name: Option<String>,
    pub(super) data_volumes: Vec<DataVol>,
    pub(super) cdrom_uuid: String,
    pub(super) default_l3: Option<String>,
    /// one NIC per L3 network, device ids in this order
    pub(super) nics: Vec<Nic>,
    pub(super) user_tags: Vec<String>,
    /// system tags recorded on the VM (staticIp, ipv4Netmask, ipv4Gateway)
    #[serde(default)]
    pub(super) system_tags: Vec<String>,
    /// system tags recorded on the root / data volumes
    #[serde(default)]
    pub(super) root_volume_tags: Vec<String>,
    #[serde(default)]
    pub(super) data_volume_tags: Vec<String>,
    #[serde(default)]
    pub(super) ssh_key_pairs: Vec<String>,
    /// NIC driver type (virtio or e1000); None in plans stored before it existed (virtio)
    #[serde(default)]
    pub(super) nic_driver: Option<String>,
    /// a TPM device (`devices.tpm.enable`)
    #[serde(default)]
    pub(super) tpm: Option<TpmPlan>,
    /// the volume snapshot the root volume is a copy of (CreateVmInstanceFromVolumeSnapshot)
    #[serde(default)]
    pub(super) from_snapshot: Option<String>,
    /// the host whose LocalStorage disk holds the snapshot / existing volumes the VM uses: the
    /// only host it may run on (upstream LocalStorageResourceRefVO.hostUuid)
    #[serde(default)]
    pub(super) local_host: Option<String>,
    /// the volumes whose LocalStorage ref (host holding the file) create-volumes wrote, deleted
    /// by its undo
    #[serde(default)]
    pub(super) local_refs: Vec<String>,
    /// the chosen primary storage's type (set by allocate-primary-storage; None in plans stored
    /// before it existed)
    #[serde(default)]
    pub(super) ps_type: Option<String>,
    /// the host chosen (set by allocate-host)
    pub(super) host: Option<String>,
    /// the primary storage chosen (set by allocate-primary-storage)
    pub(super) ps: Option<String>,
    /// the canonical JSON of the request (see [`request_fingerprint`]), kept with the VM
    #[serde(default)]
    pub(super) request: Option<String>,
    /// what the host must do (set by plan-on-host, read by instantiate-on-host and its undo)
    #[serde(default)]
    pub(super) on_host: Option<OnHost>,
    /// what earlier steps learnt, so that later steps need not read it back (None in plans
    /// stored before these existed: read from the database then): the VM's internal id (set
    /// by record-vm), the chosen host's hypervisor type (allocate-host) and the chosen primary
    /// storage's URL (allocate-primary-storage)
    #[serde(default)]
    pub(super) internal_id: Option<i64>,
    #[serde(default)]
    pub(super) host_hypervisor: Option<String>,
    #[serde(default)]
    pub(super) ps_url: Option<String>,
    /// the `primaryStorageUuidForDataVolume::` storage: the data volumes marked `on_data_ps` go
    /// there, the rest where the root volume goes
    #[serde(default)]
    pub(super) data_ps: Option<String>,
    /// its URL and type (set by allocate-primary-storage)
    #[serde(default)]
    pub(super) data_ps_url: Option<String>,
    #[serde(default)]
    pub(super) data_ps_type: Option<String>,
    /// what allocate-primary-storage took of `data_ps` and no volume row holds yet (create-volumes
    /// hands it to the volumes, its undo takes it back; the primary-storage undo gives it back)
    #[serde(default)]
    pub(super) data_ps_held: i64,
}

/// The instantiation plan: read from the database in a transaction (plan-on-host), carried
/// out by the host agent outside any transaction (instantiate-on-host).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub enum OnHost {
    Simulator,
    Kvm(Box<kvm::Plan>),
}

impl Ctx {
    pub(super) fn disk_total(&self) -> i64 {
        self.root_size + self.data_volumes.iter().map(|d| d.size).sum::<i64>()
    }

    /// The data volumes that go on `data_ps` (none without it).
    pub(super) fn data_ps_volumes(&self) -> impl Iterator<Item = &DataVol> {
        self.data_volumes.iter().filter(move |d| self.data_ps.is_some() && d.on_data_ps && !d.adopt)
    }

    /// What the data volumes on `data_ps` take.
    pub(super) fn data_ps_size(&self) -> i64 {
        self.data_ps_volumes().map(|d| d.size).sum()
    }

    /// What the storage of the root volume takes: everything but the volumes on `data_ps`.
    pub(super) fn main_ps_size(&self) -> i64 {
        self.disk_total() - self.data_ps_size()
    }
}

pub static CREATE_VM: SagaDef<Ctx> = SagaDef {
    kind: "create-vm",
    steps: &[
        Step::tx("create-vm-record", record_do, record_undo),
        Step::tx("allocate-host", host_do, host_undo),
        Step::tx("allocate-primary-storage", ps_do, ps_undo),
        Step::tx("create-volumes", volumes_do, volumes_undo),
        Step::tx("allocate-nics", nics_do, nics_undo),
        Step::tx("create-cdrom", cdrom_do, cdrom_undo),
        Step::tx("plan-on-host", plan_do, plan_undo),
        Step::remote("instantiate-on-host", instantiate_do, instantiate_undo),
        Step::tx("finish", finish_do, saga::nothing),
    ],
};

/// Starting a `Created` (JustCreate) VM: the rest of the creation plan, after the state moves
/// from Created to Starting (undone back to Created).
pub static START_CREATED: SagaDef<Ctx> = SagaDef {
    kind: "start-created-vm",
    steps: &[
        Step::tx("mark-starting", starting_do, starting_undo),
        Step::tx("allocate-host", host_do, host_undo),
        Step::tx("allocate-primary-storage", ps_do, ps_undo),
        Step::tx("create-volumes", volumes_do, volumes_undo),
        Step::tx("allocate-nics", nics_do, nics_undo),
        Step::tx("create-cdrom", cdrom_do, cdrom_undo),
        Step::tx("plan-on-host", plan_do, plan_undo),
        Step::remote("instantiate-on-host", instantiate_do, instantiate_undo),
        Step::tx("finish", finish_do, saga::nothing),
    ],
};

pub(super) fn starting_do<'a>(_app: &'a App, tx: &'a mut WriteTx, c: &'a mut Ctx) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        let n = tx
            .execute(
                "UPDATE vm_instance SET state = 'Starting', last_op_date = $1 WHERE uuid = $2 AND state = 'Created'",
                &[Val::I(now_ms()), Val::from(c.vm_uuid.as_str())],
            )
            .await?;
        if n != 1 {
            let state = vm_state(tx, &c.vm_uuid).await?.unwrap_or_else(|| "Destroyed".into());
            return Err(VmOp::Start.refused(&state));
        }
        Ok(())
    })
}

pub(super) fn starting_undo<'a>(_app: &'a App, tx: &'a mut WriteTx, c: &'a mut Ctx) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        tx.execute(
            "UPDATE vm_instance SET state = 'Created', cluster_uuid = $1, zone_uuid = $2 WHERE uuid = $3 AND state = 'Starting'",
            &[Val::from(c.cluster_uuid.clone()), Val::from(c.zone_uuid.clone()), Val::from(c.vm_uuid.as_str())],
        )
        .await?;
        Ok(())
    })
}

/// Starting a Stopped VM: host and addresses in a transaction (the VM moves to Starting),
/// QEMU through the host's agent outside it, then Running.
pub static START_STOPPED: SagaDef<StartCtx> = SagaDef {
    kind: "start-stopped-vm",
    steps: &[
        Step::tx("allocate-host-for-start", start_alloc_do, start_alloc_undo),
        Step::remote("start-on-host", start_host_do, start_host_undo),
        Step::tx("mark-running", start_finish_do, saga::nothing),
    ],
};

/// The start saga's context.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct StartCtx {
    pub(super) vm_uuid: String,
    /// StartVmInstance's hostUuid / clusterUuid
    pub(super) host_uuid: Option<String>,
    pub(super) cluster_uuid: Option<String>,
    /// the VM's (last host, cluster, zone) before the start, restored by the undo
    #[serde(default)]
    pub(super) before: Option<(Option<String>, Option<String>, Option<String>)>,
    /// NICs without an address that the start gave one
    #[serde(default)]
    pub(super) readdressed: Vec<String>,
    /// the agent's plan on a KVM host
    #[serde(default)]
    pub(super) plan: Option<kvm::Plan>,
}

pub(super) fn start_alloc_do<'a>(app: &'a App, tx: &'a mut WriteTx, c: &'a mut StartCtx) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        let v = Val::from(c.vm_uuid.as_str());
        if let Some(r) = tx
            .fetch_optional(
                "SELECT last_host_uuid, cluster_uuid, zone_uuid FROM vm_instance WHERE uuid = $1",
                std::slice::from_ref(&v),
            )
            .await?
        {
            c.before = Some((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?));
        }
        c.readdressed = tx
            .fetch_all("SELECT uuid FROM vm_nic WHERE vm_instance_uuid = $1 AND used_ip_uuid IS NULL", &[v])
            .await?
            .iter()
            .map(|r| r.try_get::<String, _>(0))
            .collect::<std::result::Result<_, _>>()?;
        let req = StartVm { host_uuid: c.host_uuid.clone(), cluster_uuid: c.cluster_uuid.clone() };
        let host = start_stopped(app, tx, &c.vm_uuid, &req).await?;
        c.plan = kvm::start_plan(tx, &c.vm_uuid, &host).await?;
        Ok(())
    })
}

/// Back to Stopped where it was: host capacity and the new addresses given back.
pub(super) fn start_alloc_undo<'a>(
    _app: &'a App,
    tx: &'a mut WriteTx,
    c: &'a mut StartCtx,
) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        release_host(tx, &c.vm_uuid).await?;
        for nic in &c.readdressed {
            tx.execute("DELETE FROM used_ip WHERE vm_nic_uuid = $1", &[Val::from(nic.as_str())]).await?;
            tx.execute(
                "UPDATE vm_nic SET used_ip_uuid = NULL, ip = NULL, netmask = NULL, gateway = NULL WHERE uuid = $1",
                &[Val::from(nic.as_str())],
            )
            .await?;
        }
        if let Some((last, cluster, zone)) = &c.before {
            tx.execute(
                "UPDATE vm_instance SET state = 'Stopped', host_uuid = NULL, last_host_uuid = $1, cluster_uuid = $2, \
                 zone_uuid = $3, last_op_date = $4 WHERE uuid = $5 AND state = 'Starting'",
                &[
                    Val::from(last.clone()),
                    Val::from(cluster.clone()),
                    Val::from(zone.clone()),
                    Val::I(now_ms()),
                    Val::from(c.vm_uuid.as_str()),
                ],
            )
            .await?;
        }
        Ok(())
    })
}

/// QEMU on a KVM host (nothing on a simulator host), no transaction open.
pub(super) fn start_host_do<'a>(app: &'a App, c: &'a mut StartCtx) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        match &c.plan {
            Some(p) => kvm::instantiate(&kvm::with_credentials(&app.db, p).await?).await,
            None => Ok(()),
        }
    })
}

pub(super) fn start_host_undo<'a>(app: &'a App, c: &'a mut StartCtx) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        if let Some(p) = &c.plan {
            kvm::stop_started(&kvm::with_credentials(&app.db, p).await?).await;
        }
        Ok(())
    })
}

pub(super) fn start_finish_do<'a>(
    _app: &'a App,
    tx: &'a mut WriteTx,
    c: &'a mut StartCtx,
) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        let n = tx
            .execute(
                "UPDATE vm_instance SET state = 'Running', last_op_date = $1 WHERE uuid = $2 AND state = 'Starting'",
                &[Val::I(now_ms()), Val::from(c.vm_uuid.as_str())],
            )
            .await?;
        if n != 1 {
            let state = vm_state(tx, &c.vm_uuid).await?.unwrap_or_else(|| "Destroyed".into());
            return Err(VmOp::Start.refused(&state));
        }
        Ok(())
    })
}

/// `JustCreate`: only the record.
pub static JUST_CREATE: SagaDef<Ctx> =
    SagaDef { kind: "create-vm-just", steps: &[Step::tx("create-vm-record", record_do, record_undo)] };

/// Unwind a stored saga of one of this module's kinds; `Ok(false)` for an unknown kind.
pub async fn unwind_saga(app: &App, kind: &str, id: &str, step: i64, state: &str, data: &str) -> Result<bool> {
    let def = match kind {
        "create-vm" => &CREATE_VM,
        "create-vm-just" => &JUST_CREATE,
        "start-created-vm" => &START_CREATED,
        "start-stopped-vm" => {
            saga::unwind_row(app, &START_STOPPED, id, step, state, data).await?;
            return Ok(true);
        }
        _ => return Ok(false),
    };
    saga::unwind_row(app, def, id, step, state, data).await?;
    Ok(true)
}

pub(super) fn record_do<'a>(_app: &'a App, tx: &'a mut WriteTx, c: &'a mut Ctx) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        let row = tx
            .fetch_optional(
                "UPDATE vm_internal_id SET next_value = next_value + 1 WHERE id = 1 RETURNING next_value",
                &[],
            )
            .await?
            .ok_or_else(|| Error::Internal("the vm internal id sequence is missing".into()))?;
        let internal_id: i64 = row.try_get(0)?;
        c.internal_id = Some(internal_id);
        let now = now_ms();
        let state = if c.strategy == "JustCreate" { "Created" } else { "Starting" };
        tx.execute(
            "INSERT INTO vm_instance (uuid, name, description, zone_uuid, cluster_uuid, image_uuid, instance_offering_uuid, \
             platform, architecture, type, memory_size, reserved_memory_size, cpu_num, cpu_speed, allocator_strategy, state, \
             internal_id, guest_os_type, create_date, last_op_date, reserved_cpu, reserved_memory, reserved_ps_size, \
             default_l3_network_uuid, create_request) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $19, 0, 0, 0, $20, $21)",
            &[
                Val::from(c.vm_uuid.as_str()),
                Val::from(c.name.as_str()),
                Val::from(c.description.clone()),
                Val::from(c.zone_uuid.clone()),
                Val::from(c.cluster_uuid.clone()),
                Val::from(c.image_uuid.clone()),
                Val::from(c.instance_offering_uuid.clone()),
                Val::from(c.platform.clone()),
                Val::from(c.architecture.clone()),
                Val::from(c.vm_type.as_str()),
                Val::I(c.memory_size),
                Val::from(c.reserved_memory_size),
                Val::I(c.cpu_num),
                Val::I(c.cpu_speed),
                Val::from(Some(c.allocator_strategy.as_str()).filter(|a| !a.is_empty())),
                Val::from(state),
                Val::I(internal_id),
                Val::from(c.guest_os_type.clone()),
                Val::I(now),
                Val::from(c.default_l3.clone()),
                Val::from(c.request.clone()),
            ],
        )
        .await?;
        crate::resources::own(tx, &c.vm_uuid, VM.vo, &c.account_uuid).await?;
        crate::resources::tag::attach_create_tags(tx, &c.vm_uuid, VM.vo, &c.system_tags, &c.user_tags).await?;
        if let Some(t) = &c.tpm {
            tx.execute(
                "INSERT INTO tpm (uuid, name, vm_instance_uuid, key_provider_uuid, resource_key_created_new, create_date, \
                 last_op_date) VALUES ($1, $2, $3, $4, $5, $6, $6)",
                &[
                    Val::from(t.uuid.as_str()),
                    Val::S(format!("TPM-for-VM-{}", c.vm_uuid)),
                    Val::from(c.vm_uuid.as_str()),
                    Val::from(t.key_provider_uuid.clone()),
                    Val::from(t.resource_key_created_new),
                    Val::I(now),
                ],
            )
            .await?;
            crate::resources::own(tx, &t.uuid, TPM.vo, &c.account_uuid).await?;
        }
        for k in &c.ssh_key_pairs {
            tx.execute(
                "INSERT INTO ssh_key_pair_ref (ssh_key_pair_uuid, resource_uuid, resource_type, create_date) \
                 VALUES ($1, $2, 'VmInstanceVO', $3) ON CONFLICT (ssh_key_pair_uuid, resource_uuid) DO NOTHING",
                &[Val::from(k.as_str()), Val::from(c.vm_uuid.as_str()), Val::I(now)],
            )
            .await?;
        }
        if c.strategy == "JustCreate" {
            // upstream keeps the creation struct so a later start can replay it
            let plan = serde_json::to_string(&*c)
                .map_err(|e| Error::Internal(format!("cannot store the creation plan: {e}")))?;
            tx.execute(
                "UPDATE vm_instance SET creation = $1 WHERE uuid = $2",
                &[Val::S(plan), Val::from(c.vm_uuid.as_str())],
            )
            .await?;
        }
        Ok(())
    })
}

pub(super) fn record_undo<'a>(_app: &'a App, tx: &'a mut WriteTx, c: &'a mut Ctx) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        tx.execute("DELETE FROM vm_instance WHERE uuid = $1", &[Val::from(c.vm_uuid.as_str())]).await?;
        tx.execute("DELETE FROM ssh_key_pair_ref WHERE resource_uuid = $1", &[Val::from(c.vm_uuid.as_str())]).await?;
        if let Some(t) = &c.tpm {
            tx.execute("DELETE FROM tpm WHERE uuid = $1", &[Val::from(t.uuid.as_str())]).await?;
            crate::resources::disown(tx, &t.uuid).await?;
        }
        crate::resources::tag::delete_for_resource(tx, &c.vm_uuid).await?;
        crate::resources::disown(tx, &c.vm_uuid).await?;
        Ok(())
    })
}

pub(super) fn in_list(col: &str, first: usize, n: usize) -> String {
    let ps: Vec<String> = (0..n).map(|i| format!("${}", first + i)).collect();
    format!("{col} IN ({})", ps.join(", "))
}

pub(super) fn host_alloc_error(details: String) -> Error {
    Error::Api(ErrorCode::new(HOST_ALLOCATION_1000, details))
}

/// Host allocation (facts 6.1): filters in SQL, sort by strategy, then the first host whose
/// atomic reservation succeeds.
pub(super) fn host_do<'a>(app: &'a App, tx: &'a mut WriteTx, c: &'a mut Ctx) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        // location + state + hypervisor. The cluster/zone conditions are `IN (uncorrelated
        // subquery)`: evaluated once per statement instead of once per host.
        let mut vals: Vec<Val> = Vec::new();
        // the clusters the L2 networks of all the VM's L3 networks are attached to (upstream's
        // first filter, AttachedL2NetworkAllocatorFlow)
        let mut base = String::from("1 = 1");
        for l3 in c.nics.iter().map(|n| n.l3.as_str()) {
            vals.push(Val::from(l3));
            base += &format!(
                " AND h.cluster_uuid IN (SELECT r.cluster_uuid FROM l3_network l JOIN l2_network_cluster_ref r \
                 ON r.l2_network_uuid = l.l2_network_uuid WHERE l.uuid = ${})",
                vals.len()
            );
        }
        // Each filter stage with the error it stands for: counted (in order) only when no host
        // passes them all, to name the first stage no host passes.
        let mut stages: Vec<(String, usize, String)> = Vec::new();
        if !c.nics.is_empty() {
            let l3s: Vec<&str> = c.nics.iter().map(|n| n.l3.as_str()).collect();
            stages.push((
                base.clone(),
                vals.len(),
                format!(
                    "no host found in clusters that has attached to L2Networks which have L3Networks[{}]",
                    l3s.join(", ")
                ),
            ));
        }
        base += " AND h.state = 'Enabled' AND h.status = 'Connected'";
        if let Some(h) = &c.designated_host {
            vals.push(Val::from(h.as_str()));
            base += &format!(" AND h.uuid = ${}", vals.len());
        } else if let Some(cl) = &c.cluster_uuid {
            vals.push(Val::from(cl.as_str()));
            base += &format!(" AND h.cluster_uuid = ${}", vals.len());
        } else if let Some(z) = &c.zone_uuid {
            vals.push(Val::from(z.as_str()));
            base += &format!(" AND h.zone_uuid = ${}", vals.len());
        }
        base += &format!(" AND {}", in_list("h.hypervisor_type", vals.len() + 1, c.hypervisors.len()));
        vals.extend(c.hypervisors.iter().map(|h| Val::from(h.as_str())));
        stages.push((
            base.clone(),
            vals.len(),
            format!("no host having state=Enabled status=Connected hypervisorType={} found", c.hypervisors.join(",")),
        ));
        if let (Some(img), None) = (&c.image_uuid, &c.from_snapshot) {
            vals.push(Val::from(img.as_str()));
            base += &format!(
                " AND h.zone_uuid IN (SELECT bz.zone_uuid FROM image_backup_storage_ref ibr JOIN backup_storage_zone_ref bz \
                 ON bz.backup_storage_uuid = ibr.backup_storage_uuid JOIN backup_storage b ON b.uuid = ibr.backup_storage_uuid \
                 WHERE ibr.image_uuid = ${} AND ibr.status = 'Ready' AND b.status = 'Connected')",
                vals.len()
            );
            stages.push((
                base.clone(),
                vals.len(),
                // `{zones}`: filled in only when this stage is the one that fails
                format!(
                    "no host found in zones[uuids:{{zones}}] that attaches to backup storage where image[{img}] is on"
                ),
            ));
        }
        vals.push(Val::I(c.cpu_num));
        vals.push(Val::I(c.memory_size));
        base += &format!(
            " AND h.available_cpu >= ${} AND h.available_memory >= ${m} AND h.total_physical_memory > ${m}",
            vals.len() - 1,
            m = vals.len()
        );
        stages.push((
            base.clone(),
            vals.len(),
            format!("no host having cpu[{}], memory[{} bytes] found", c.cpu_num, c.memory_size),
        ));
        // upstream names the VM's whole disk size; the root volume's storage takes what does
        // not go on the data volumes' one
        let disk = c.disk_total();
        vals.push(Val::I(c.main_ps_size()));
        let disk_param = vals.len();
        let mut ps_filter = format!("p.available_capacity >= ${disk_param}");
        if let Some(p) = &c.primary_storage_for_root {
            vals.push(Val::from(p.as_str()));
            ps_filter += &format!(" AND p.uuid = ${}", vals.len());
        }
        base += &format!(
            " AND h.cluster_uuid IN (SELECT r.cluster_uuid FROM primary_storage_cluster_ref r JOIN primary_storage p \
             ON p.uuid = r.primary_storage_uuid WHERE p.state = 'Enabled' AND p.status = 'Connected' AND {ps_filter})"
        );
        // LocalStorage: the host's own disk must have room (upstream LocalStorageAllocatorFactory)
        stages.push((
            base.clone(),
            vals.len(),
            format!("cannot find available primary storage[state: Enabled, status: Connected, available capacity {disk} bytes]"),
        ));
        base += &crate::resources::primary_storage::host_has_room_filter(&ps_filter, disk_param);
        stages.push((
            base.clone(),
            vals.len(),
            format!(
                "the local primary storage has no hosts with enough disk capacity[{disk} bytes] required by the vm[uuid:{}]",
                c.vm_uuid
            ),
        ));
        data_ps_host_filter(c, &mut base, &mut vals, &mut stages);
        if let Some(lh) = &c.local_host {
            // the local-storage filter runs after the others (upstream LocalStorageAllocatorFactory)
            vals.push(Val::from(lh.as_str()));
            base += &format!(" AND h.uuid = ${}", vals.len());
            stages.push((
                base.clone(),
                vals.len(),
                format!(
                    "the vm[uuid: {}] using local primary storage can only be started on the host[uuid: {lh}], but the host \
                     is either not having enough CPU/memory/GPU/VFNIC or in the state[Enabled] or status[Connected] to start the vm",
                    c.vm_uuid
                ),
            ));
        }
        let order = if c.allocator_strategy.contains("LeastVmPreferred") {
            "(SELECT COUNT(*) FROM vm_instance v WHERE v.host_uuid = h.uuid), random()"
        } else {
            "random()"
        };
        // The first few candidates in the strategy's order: a reservation fails only when a host's
        // capacity changed since the filter (or the KVM reserved memory forbids it), so these
        // nearly always suffice; all candidates are read (and tried) only when none of them could
        // be reserved. Each row is a hand-off from the database thread, so not 100 per create.
        const FIRST_CANDIDATES: usize = 8;
        let candidates = format!(
            "SELECT h.uuid, h.cluster_uuid, h.zone_uuid, h.hypervisor_type FROM host h WHERE {base} ORDER BY {order}"
        );
        let mut rows = tx.fetch_all(&format!("{candidates} LIMIT {FIRST_CANDIDATES}"), &vals).await?;
        let mut tried: Option<std::collections::HashSet<String>> = None;
        if rows.is_empty() {
            for (stage, n, error) in stages {
                if tx_count(&app.db, &format!("SELECT COUNT(*) FROM host h WHERE {stage}"), &vals[..n]).await? == 0 {
                    if let (true, Some(img)) = (error.contains("{zones}"), &c.image_uuid) {
                        return Err(host_alloc_error(error.replace("{zones}", &image_zones(&app.db, img).await?)));
                    }
                    return Err(host_alloc_error(error));
                }
            }
            return Err(host_alloc_error(format!(
                "cannot find available primary storage[state: Enabled, status: Connected, available capacity {disk} bytes]"
            )));
        }
        let mut i = 0;
        while i < rows.len() {
            let row = &rows[i];
            i += 1;
            let h: String = row.try_get(0)?;
            if tried.as_ref().is_some_and(|t| t.contains(&h)) {
                continue;
            }
            if !crate::resources::host::reserve(app, tx, &h, c.cpu_num, c.memory_size).await? {
                if i == rows.len() && rows.len() == FIRST_CANDIDATES && tried.is_none() {
                    // none of the first candidates: all of them, less those tried
                    tried = Some(rows.iter().filter_map(|r| r.try_get::<String, _>(0).ok()).collect());
                    rows = tx.fetch_all(&candidates, &vals).await?;
                    i = 0;
                }
                continue;
            }
            let cluster: String = row.try_get(1)?;
            let zone: String = row.try_get(2)?;
            let hv: String = row.try_get(3)?;
            tx.execute(
                "UPDATE vm_instance SET host_uuid = $1, cluster_uuid = $2, zone_uuid = $3, hypervisor_type = $4, \
                 reserved_host_uuid = $1, reserved_cpu = $5, reserved_memory = $6, last_op_date = $7 WHERE uuid = $8",
                &[
                    Val::from(h.as_str()),
                    Val::from(cluster.as_str()),
                    Val::from(zone.as_str()),
                    Val::from(hv.as_str()),
                    Val::I(c.cpu_num),
                    Val::I(c.memory_size),
                    Val::I(now_ms()),
                    Val::from(c.vm_uuid.as_str()),
                ],
            )
            .await?;
            c.host = Some(h);
            c.host_hypervisor = Some(hv);
            c.cluster_uuid = Some(cluster);
            c.zone_uuid = Some(zone);
            return Ok(());
        }
        Err(host_alloc_error(format!("no host having cpu[{}], memory[{} bytes] found", c.cpu_num, c.memory_size)))
    })
}

/// `primaryStorageUuidForDataVolume::`: only hosts whose cluster has that storage attached,
/// Enabled, Connected and with room for the data volumes (on LocalStorage, on the host's own
/// disk) (upstream VmAllocateHostFlow makes it a required storage of HostPrimaryStorageAllocatorFlow).
fn data_ps_host_filter(c: &Ctx, base: &mut String, vals: &mut Vec<Val>, stages: &mut Vec<(String, usize, String)>) {
    let Some(dp) = &c.data_ps else { return };
    let size = c.data_ps_size();
    if !c.data_ps_volumes().any(|_| true) {
        return;
    }
    vals.push(Val::I(size));
    let size_param = vals.len();
    vals.push(Val::from(dp.as_str()));
    let filter = format!("p.available_capacity >= ${size_param} AND p.uuid = ${}", vals.len());
    *base += &format!(
        " AND h.cluster_uuid IN (SELECT r.cluster_uuid FROM primary_storage_cluster_ref r JOIN primary_storage p \
         ON p.uuid = r.primary_storage_uuid WHERE p.state = 'Enabled' AND p.status = 'Connected' AND {filter})"
    );
    stages.push((
        base.clone(),
        vals.len(),
        // upstream HostPrimaryStorageAllocatorFlow's whole text
        format!(
            "cannot find available primary storage[state: Enabled, status: Connected, available capacity {} bytes]. \
             Check the state/status of primary storage and make sure they have been attached to clusters",
            c.disk_total()
        ),
    ));
    *base += &crate::resources::primary_storage::host_has_room_filter(&filter, size_param);
    stages.push((
        base.clone(),
        vals.len(),
        format!(
            "the local primary storage has no hosts with enough disk capacity[{size} bytes] required by the vm[uuid:{}]",
            c.vm_uuid
        ),
    ));
}

/// The zones the connected backup storages holding an image are attached to, as a Java list
/// prints them (upstream ImageBackupStorageAllocatorFlow's error names them).
async fn image_zones(db: &crate::db::Db, image: &str) -> Result<String> {
    let rows = db
        .fetch_all(
            "SELECT DISTINCT bz.zone_uuid FROM image_backup_storage_ref ibr \
             JOIN backup_storage b ON b.uuid = ibr.backup_storage_uuid \
             JOIN backup_storage_zone_ref bz ON bz.backup_storage_uuid = ibr.backup_storage_uuid \
             WHERE ibr.image_uuid = $1 AND ibr.status <> 'Deleted' AND b.status = 'Connected' ORDER BY bz.zone_uuid",
            &[Val::from(image)],
        )
        .await?;
    let zones: Vec<String> = rows.iter().map(|r| r.try_get::<String, _>(0)).collect::<std::result::Result<_, _>>()?;
    Ok(format!("[{}]", zones.join(", ")))
}

pub(super) async fn tx_count(db: &crate::db::Db, sql: &str, vals: &[Val]) -> Result<i64> {
    let row = db.fetch_optional(sql, vals).await?;
    Ok(match row {
        Some(r) => r.try_get::<i64, _>(0)?,
        None => 0,
    })
}

/// Give back the host capacity the VM row says it holds (compare-and-set: once only).
pub(super) async fn release_host(tx: &mut WriteTx, vm_uuid: &str) -> Result<()> {
    let Some(row) = tx
        .fetch_optional(
            "SELECT reserved_host_uuid, reserved_cpu, reserved_memory FROM vm_instance WHERE uuid = $1",
            &[Val::from(vm_uuid)],
        )
        .await?
    else {
        return Ok(());
    };
    let Some(h): Option<String> = row.try_get(0)? else { return Ok(()) };
    let cpu: i64 = row.try_get(1)?;
    let mem: i64 = row.try_get(2)?;
    let n = tx
        .execute(
            "UPDATE vm_instance SET reserved_host_uuid = NULL, reserved_cpu = 0, reserved_memory = 0 \
             WHERE uuid = $1 AND reserved_host_uuid = $2 AND reserved_cpu = $3 AND reserved_memory = $4",
            &[Val::from(vm_uuid), Val::from(h.as_str()), Val::I(cpu), Val::I(mem)],
        )
        .await?;
    if n == 1 {
        crate::resources::host::release(tx, &h, cpu, mem).await?;
    }
    Ok(())
}

pub(super) fn host_undo<'a>(_app: &'a App, tx: &'a mut WriteTx, c: &'a mut Ctx) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        release_host(tx, &c.vm_uuid).await?;
        tx.execute(
            "UPDATE vm_instance SET host_uuid = NULL, hypervisor_type = NULL WHERE uuid = $1",
            &[Val::from(c.vm_uuid.as_str())],
        )
        .await?;
        c.host = None;
        c.host_hypervisor = None;
        Ok(())
    })
}

/// Primary storage for the volumes (facts 6.2): Enabled + Connected, attached to the host's
/// cluster, enough capacity, most available first; the reservation is one UPDATE.
pub(super) fn ps_do<'a>(app: &'a App, tx: &'a mut WriteTx, c: &'a mut Ctx) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        let cluster = c.cluster_uuid.clone().unwrap_or_default();
        let size = c.main_ps_size();
        let mut vals = vec![Val::from(cluster.as_str()), Val::I(size)];
        let mut filter = String::new();
        if let Some(p) = &c.primary_storage_for_root {
            vals.push(Val::from(p.as_str()));
            filter = " AND p.uuid = $3".into();
        }
        let rows = tx
            .fetch_all(
                &format!(
                    "SELECT p.uuid, p.url, p.type FROM primary_storage p JOIN primary_storage_cluster_ref r ON r.primary_storage_uuid = p.uuid \
                     WHERE r.cluster_uuid = $1 AND p.state = 'Enabled' AND p.status = 'Connected' \
                     AND p.available_capacity >= $2{filter} ORDER BY p.available_capacity DESC, p.uuid"
                ),
                &vals,
            )
            .await?;
        // With data volumes on a storage of their own, two creates naming two storages in
        // opposite roles would take the rows' locks in opposite orders: on PostgreSQL every row
        // this step may change is locked first, in uuid order (SQLite has one writer at a time).
        if let (Some(dp), crate::db::DbKind::Postgres) = (&c.data_ps, app.db.kind) {
            let mut uuids = vec![Val::from(dp.as_str())];
            for r in &rows {
                uuids.push(Val::S(r.try_get(0)?));
            }
            let marks: Vec<String> = (1..=uuids.len()).map(|i| format!("${i}")).collect();
            tx.fetch_all(
                &format!(
                    "SELECT uuid FROM primary_storage WHERE uuid IN ({}) ORDER BY uuid FOR UPDATE",
                    marks.join(", ")
                ),
                &uuids,
            )
            .await?;
        }
        let now = now_ms();
        let host = c.host.clone().unwrap_or_default();
        for row in rows {
            let p: String = row.try_get(0)?;
            let n = tx
                .execute(
                    "UPDATE primary_storage SET available_capacity = available_capacity - $1, last_op_date = $2 \
                     WHERE uuid = $3 AND available_capacity >= $1 AND state = 'Enabled' AND status = 'Connected'",
                    &[Val::I(size), Val::I(now), Val::from(p.as_str())],
                )
                .await?;
            // LocalStorage: the files go on the chosen host's disk, which must have room (the
            // storage's row first, as every change of a host's row)
            let local = row.try_get::<String, _>(2)? == crate::resources::primary_storage::LOCAL_STORAGE;
            if n == 1 && local && !crate::resources::primary_storage::take_host_capacity(tx, &p, &host, size).await? {
                tx.execute(
                    "UPDATE primary_storage SET available_capacity = available_capacity + $1 WHERE uuid = $2",
                    &[Val::I(size), Val::from(p.as_str())],
                )
                .await?;
                continue;
            }
            if n == 1 {
                tx.execute(
                    "UPDATE vm_instance SET reserved_ps_uuid = $1, reserved_ps_size = $2 WHERE uuid = $3",
                    &[Val::from(p.as_str()), Val::I(size), Val::from(c.vm_uuid.as_str())],
                )
                .await?;
                c.ps = Some(p);
                c.ps_url = Some(row.try_get::<Option<String>, _>(1)?.unwrap_or_default());
                c.ps_type = Some(row.try_get::<String, _>(2)?);
                take_data_ps(tx, c, &cluster, &host).await?;
                return Ok(());
            }
        }
        Err(Error::Api(ErrorCode::new(
            PS_1000,
            format!(
                "cannot find available primary storage[state: Enabled, status: Connected, available capacity {size} bytes] \
                 in cluster[uuid:{cluster}]"
            ),
        )))
    })
}

/// `primaryStorageUuidForDataVolume::`: each data volume's room on that storage, one atomic
/// UPDATE per volume as upstream allocates one per disk (and on LocalStorage on the VM's host's
/// disk); a failure fails the step, whose transaction then takes nothing.
async fn take_data_ps(tx: &mut WriteTx, c: &mut Ctx, cluster: &str, host: &str) -> Result<()> {
    let Some(dp) = c.data_ps.clone() else { return Ok(()) };
    let sizes: Vec<i64> = c.data_ps_volumes().map(|d| d.size).collect();
    if sizes.is_empty() {
        return Ok(());
    }
    let row =
        tx.fetch_optional("SELECT url, type FROM primary_storage WHERE uuid = $1", &[Val::from(dp.as_str())]).await?;
    let (url, ty): (Option<String>, Option<String>) = match &row {
        Some(r) => (r.try_get(0)?, Some(r.try_get(1)?)),
        None => (None, None),
    };
    let local = ty.as_deref() == Some(crate::resources::primary_storage::LOCAL_STORAGE);
    if local {
        // upstream LocalStorageDefaultAllocateCapacityFlow: with another, non-local storage for
        // the host, the data volumes cannot be sent to a LocalStorage
        let other = tx
            .fetch_optional(
                "SELECT 1 FROM primary_storage_cluster_ref r JOIN primary_storage p ON p.uuid = r.primary_storage_uuid \
                 WHERE r.cluster_uuid = $1 AND p.type <> 'LocalStorage' AND p.state = 'Enabled' AND p.status = 'Connected'",
                &[Val::from(cluster)],
            )
            .await?;
        if other.is_some() {
            return Err(Error::operr(format!(
                "The cluster mounts multiple primary storage[{dp}(LocalStorage), other non-LocalStorage primary storage], \
                 primaryStorageUuidForDataVolume cannot be specified LocalStorage"
            )));
        }
    }
    let now = now_ms();
    for size in sizes {
        let n = tx
            .execute(
                "UPDATE primary_storage SET available_capacity = available_capacity - $1, last_op_date = $2 \
                 WHERE uuid = $3 AND available_capacity >= $1 AND state = 'Enabled' AND status = 'Connected' \
                 AND uuid IN (SELECT primary_storage_uuid FROM primary_storage_cluster_ref WHERE cluster_uuid = $4)",
                &[Val::I(size), Val::I(now), Val::from(dp.as_str()), Val::from(cluster)],
            )
            .await?;
        if n != 1 || (local && !crate::resources::primary_storage::take_host_capacity(tx, &dp, host, size).await?) {
            // upstream PrimaryStorageMainAllocatorFlow's text (its bracket left open)
            return Err(Error::operr(format!(
                "cannot find primary storage satisfying conditions[connected to host:{host}, state:Enabled, status: Connected, \
                 available capacity > {size}"
            )));
        }
        c.data_ps_held += size;
    }
    c.data_ps_url = Some(url.unwrap_or_default());
    c.data_ps_type = ty;
    Ok(())
}

/// Give back what allocate-primary-storage took of the data volumes' storage and no volume
/// holds (on LocalStorage, to the VM's host's disk too).
async fn release_data_ps(tx: &mut WriteTx, c: &mut Ctx) -> Result<()> {
    let held = std::mem::take(&mut c.data_ps_held);
    if let (Some(dp), true) = (&c.data_ps, held > 0) {
        tx.execute(
            "UPDATE primary_storage SET available_capacity = available_capacity + $1, last_op_date = $2 WHERE uuid = $3",
            &[Val::I(held), Val::I(now_ms()), Val::from(dp.as_str())],
        )
        .await?;
        if let Some(h) = &c.host {
            crate::resources::primary_storage::return_host_capacity(tx, dp, h, held).await?;
        }
    }
    c.data_ps_url = None;
    c.data_ps_type = None;
    Ok(())
}

/// Give back the primary-storage capacity still held on the VM row (compare-and-set).
pub(super) async fn release_ps(tx: &mut WriteTx, vm_uuid: &str) -> Result<()> {
    let Some(row) = tx
        .fetch_optional(
            "SELECT reserved_ps_uuid, reserved_ps_size FROM vm_instance WHERE uuid = $1",
            &[Val::from(vm_uuid)],
        )
        .await?
    else {
        return Ok(());
    };
    let Some(p): Option<String> = row.try_get(0)? else { return Ok(()) };
    let size: i64 = row.try_get(1)?;
    let n = tx
        .execute(
            "UPDATE vm_instance SET reserved_ps_uuid = NULL, reserved_ps_size = 0 \
             WHERE uuid = $1 AND reserved_ps_uuid = $2 AND reserved_ps_size = $3",
            &[Val::from(vm_uuid), Val::from(p.as_str()), Val::I(size)],
        )
        .await?;
    if n == 1 && size > 0 {
        tx.execute(
            "UPDATE primary_storage SET available_capacity = available_capacity + $1, last_op_date = $2 WHERE uuid = $3",
            &[Val::I(size), Val::I(now_ms()), Val::from(p.as_str())],
        )
        .await?;
        // LocalStorage: back to the disk of the host it was taken on (the VM's, still set)
        let host: Option<String> = tx
            .fetch_optional("SELECT host_uuid FROM vm_instance WHERE uuid = $1", &[Val::from(vm_uuid)])
            .await?
            .map(|r| r.try_get(0))
            .transpose()?
            .flatten();
        if let Some(h) = host {
            crate::resources::primary_storage::return_host_capacity(tx, &p, &h, size).await?;
        }
    }
    Ok(())
}

pub(super) fn ps_undo<'a>(_app: &'a App, tx: &'a mut WriteTx, c: &'a mut Ctx) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        release_ps(tx, &c.vm_uuid).await?;
        release_data_ps(tx, c).await?;
        c.ps = None;
        c.ps_url = None;
        c.ps_type = None;
        Ok(())
    })
}

/// Root and data volume rows; each takes its share of the VM's primary-storage reservation.
pub(super) fn volumes_do<'a>(_app: &'a App, tx: &'a mut WriteTx, c: &'a mut Ctx) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        let ps = c.ps.clone().ok_or_else(|| Error::Internal("no primary storage allocated".into()))?;
        let url: String = match &c.ps_url {
            Some(u) => u.clone(),
            None => tx
                .fetch_optional("SELECT url FROM primary_storage WHERE uuid = $1", &[Val::from(ps.as_str())])
                .await?
                .map(|r| r.try_get::<String, _>(0))
                .transpose()?
                .unwrap_or_default(),
        };
        let url = url.trim_end_matches('/').to_string();
        let now = now_ms();
        let mut vols = vec![(
            c.root_volume_uuid.clone(),
            c.root_name.clone().unwrap_or_else(|| format!("ROOT-for-{}", c.name)),
            "Root",
            c.root_size,
            c.root_actual_size,
            c.root_disk_offering.clone(),
            c.image_uuid.clone(),
            0i64,
            false,
        )];
        let mut adopted = Vec::new();
        if c.root_from_volume {
            vols.clear();
            adopted.push((c.root_volume_uuid.clone(), "Root", 0i64));
        }
        for (i, d) in c.data_volumes.iter().enumerate() {
            if d.adopt {
                adopted.push((d.uuid.clone(), "Data", i as i64 + 1));
                continue;
            }
            vols.push((
                d.uuid.clone(),
                d.name.clone().unwrap_or_else(|| format!("DATA-for-{}", c.name)),
                "Data",
                d.size,
                d.actual,
                d.offering.clone(),
                d.image.clone(),
                i as i64 + 1,
                d.on_data_ps && c.data_ps.is_some(),
            ));
        }
        // existing volumes (diskAOs sourceUuid) are attached as they are, if still free
        for (uuid, ty, device) in adopted {
            let n = tx
                .execute(
                    "UPDATE volume SET vm_instance_uuid = $1, type = $2, device_id = $3, last_attach_date = $4, \
                     last_op_date = $4 WHERE uuid = $5 AND vm_instance_uuid IS NULL AND status = 'Ready' AND state = 'Enabled'",
                    &[
                        Val::from(c.vm_uuid.as_str()),
                        Val::from(ty),
                        Val::I(device),
                        Val::I(now),
                        Val::from(uuid.as_str()),
                    ],
                )
                .await?;
            if n != 1 {
                return Err(Error::operr(format!(
                    "volume[uuid:{uuid}] could not satisfy conditions[state:Enabled status:Ready] or is attached to another vm"
                )));
            }
        }
        // what the new volumes take of the VM's hold, given back with the root volume's uuid in
        // one statement after the loop
        let mut taken = 0i64;
        // the data volumes' own storage (primaryStorageUuidForDataVolume), if any
        let data_ps = c.data_ps.clone().unwrap_or_default();
        let data_url = c.data_ps_url.clone().unwrap_or_default().trim_end_matches('/').to_string();
        for (uuid, name, ty, size, actual, offering, image, device, on_data) in vols {
            let dir = if ty == "Root" { "rootVolumes" } else { "dataVolumes" };
            let (ps, url) = if on_data { (&data_ps, &data_url) } else { (&ps, &url) };
            let path = format!("{url}/{dir}/acct-{}/vol-{uuid}/{uuid}.qcow2", c.account_uuid);
            tx.execute(
                "INSERT INTO volume (uuid, name, primary_storage_uuid, vm_instance_uuid, disk_offering_uuid, root_image_uuid, \
                 install_path, type, format, size, actual_size, device_id, state, status, create_date, last_op_date, \
                 is_shareable, last_attach_date, reserved_size) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'qcow2', $9, $10, $11, 'Enabled', 'Ready', $12, $12, 0, $12, $9)",
                &[
                    Val::from(uuid.as_str()),
                    Val::from(name),
                    Val::from(ps.as_str()),
                    Val::from(c.vm_uuid.as_str()),
                    Val::from(offering),
                    Val::from(image),
                    Val::from(path),
                    Val::from(ty),
                    Val::I(size),
                    Val::I(actual),
                    Val::I(device),
                    Val::I(now),
                ],
            )
            .await?;
            crate::resources::own(tx, &uuid, VOLUME.vo, &c.account_uuid).await?;
            let mut vtags = if ty == "Root" { c.root_volume_tags.clone() } else { c.data_volume_tags.clone() };
            if let Some(d) = c.data_volumes.iter().find(|d| d.uuid == uuid) {
                // a tag on the volume's index wins over the general one of the same kind
                vtags.retain(|t| !d.tags.iter().any(|x| x.split("::").next() == t.split("::").next()));
                vtags.extend(d.tags.iter().cloned());
            }
            crate::resources::tag::attach_create_tags(tx, &uuid, VOLUME.vo, &vtags, &[]).await?;
            if on_data {
                c.data_ps_held -= size;
            } else {
                taken += size;
            }
        }
        tx.execute(
            "UPDATE vm_instance SET reserved_ps_size = reserved_ps_size - $1, root_volume_uuid = $2 WHERE uuid = $3",
            &[Val::I(taken), Val::from(c.root_volume_uuid.as_str()), Val::from(c.vm_uuid.as_str())],
        )
        .await?;
        // on LocalStorage the files are on the chosen host's disk: a ref for each volume that
        // has none yet (the new ones; an existing volume no VM used before)
        let host = c.host.clone().unwrap_or_default();
        let maybe_local = c.ps_type.as_deref().is_none_or(|t| t == "LocalStorage")
            || c.data_ps_type.as_deref() == Some("LocalStorage")
            || c.root_from_volume
            || c.data_volumes.iter().any(|d| d.adopt);
        c.local_refs = if !maybe_local {
            Vec::new()
        } else {
            tx.fetch_all(
                "INSERT INTO local_storage_resource_ref (resource_uuid, primary_storage_uuid, host_uuid, size, \
                 resource_type, create_date, last_op_date) \
                 SELECT v.uuid, v.primary_storage_uuid, $1, v.size, 'VolumeVO', $2, $2 FROM volume v \
                 JOIN primary_storage p ON p.uuid = v.primary_storage_uuid WHERE v.vm_instance_uuid = $3 \
                 AND p.type = 'LocalStorage' \
                 AND NOT EXISTS (SELECT 1 FROM local_storage_resource_ref r WHERE r.resource_uuid = v.uuid) \
                 RETURNING resource_uuid",
                &[Val::from(host.as_str()), Val::I(now), Val::from(c.vm_uuid.as_str())],
            )
            .await?
            .iter()
            .map(|r| r.try_get::<String, _>(0))
            .collect::<std::result::Result<_, _>>()?
        };
        Ok(())
    })
}

pub(super) fn volumes_undo<'a>(_app: &'a App, tx: &'a mut WriteTx, c: &'a mut Ctx) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        // existing volumes go back to being detached data volumes
        let mut adopted: Vec<String> = c.data_volumes.iter().filter(|d| d.adopt).map(|d| d.uuid.clone()).collect();
        if c.root_from_volume {
            adopted.push(c.root_volume_uuid.clone());
        }
        for u in &adopted {
            tx.execute(
                "UPDATE volume SET vm_instance_uuid = NULL, type = 'Data', device_id = NULL WHERE uuid = $1 \
                 AND vm_instance_uuid = $2",
                &[Val::from(u.as_str()), Val::from(c.vm_uuid.as_str())],
            )
            .await?;
        }
        let mut uuids = vec![c.root_volume_uuid.clone()];
        uuids.extend(c.data_volumes.iter().map(|d| d.uuid.clone()));
        uuids.retain(|u| !adopted.contains(u));
        for u in uuids {
            let Some(row) = tx
                .fetch_optional(
                    "SELECT reserved_size FROM volume WHERE uuid = $1 AND vm_instance_uuid = $2",
                    &[Val::from(u.as_str()), Val::from(c.vm_uuid.as_str())],
                )
                .await?
            else {
                continue;
            };
            let size: i64 = row.try_get(0)?;
            let n = tx.execute("DELETE FROM volume WHERE uuid = $1", &[Val::from(u.as_str())]).await?;
            let on_data = c.data_ps.is_some() && c.data_volumes.iter().any(|d| d.uuid == u && d.on_data_ps);
            if n == 1 && on_data {
                // back to what the saga holds of the data volumes' storage
                c.data_ps_held += size;
            } else if n == 1 {
                // back to the VM's hold; the primary-storage undo returns it to the storage
                tx.execute(
                    "UPDATE vm_instance SET reserved_ps_size = reserved_ps_size + $1 WHERE uuid = $2",
                    &[Val::I(size), Val::from(c.vm_uuid.as_str())],
                )
                .await?;
            }
            crate::resources::tag::delete_for_resource(tx, &u).await?;
            crate::resources::disown(tx, &u).await?;
        }
        for u in std::mem::take(&mut c.local_refs) {
            tx.execute("DELETE FROM local_storage_resource_ref WHERE resource_uuid = $1", &[Val::from(u.as_str())])
                .await?;
        }
        tx.execute("UPDATE vm_instance SET root_volume_uuid = NULL WHERE uuid = $1", &[Val::from(c.vm_uuid.as_str())])
            .await?;
        Ok(())
    })
}

/// One empty CD-ROM drive (upstream `vm.vmDefaultCdRomNum` = 1), device 0; with the
/// `createWithoutCdRom::true` tag only the ISO image's drive, if any (upstream VmAllocateCdRomFlow).
pub(super) fn cdrom_do<'a>(_app: &'a App, tx: &'a mut WriteTx, c: &'a mut Ctx) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        let without = c
            .system_tags
            .iter()
            .any(|t| t.strip_prefix("createWithoutCdRom::").is_some_and(|v| v.eq_ignore_ascii_case("true")));
        let sql = if without {
            "INSERT INTO vm_cdrom (uuid, vm_instance_uuid, device_id, iso_uuid, name, create_date, last_op_date) \
             SELECT $1, $2, 0, uuid, $3, $4, $4 FROM image WHERE uuid = $5 AND media_type = 'ISO'"
        } else {
            // a VM made from an ISO image has it in its first CD-ROM (upstream isoUuid)
            "INSERT INTO vm_cdrom (uuid, vm_instance_uuid, device_id, iso_uuid, name, create_date, last_op_date) \
             VALUES ($1, $2, 0, (SELECT uuid FROM image WHERE uuid = $5 AND media_type = 'ISO'), $3, $4, $4)"
        };
        tx.execute(
            sql,
            &[
                Val::from(c.cdrom_uuid.as_str()),
                Val::from(c.vm_uuid.as_str()),
                Val::S(format!("vm-{}-cdRom", c.vm_uuid)),
                Val::I(now_ms()),
                Val::from(c.image_uuid.clone().filter(|_| c.from_snapshot.is_none())),
            ],
        )
        .await?;
        Ok(())
    })
}

pub(super) fn cdrom_undo<'a>(_app: &'a App, tx: &'a mut WriteTx, c: &'a mut Ctx) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        tx.execute("DELETE FROM vm_cdrom WHERE vm_instance_uuid = $1", &[Val::from(c.vm_uuid.as_str())]).await?;
        Ok(())
    })
}

/// What creating the VM on its host takes, read in this step's transaction: nothing for a
/// simulator host; for a KVM host the agent's plan (image cache → volumes → network → QEMU).
pub(super) fn plan_do<'a>(_app: &'a App, tx: &'a mut WriteTx, c: &'a mut Ctx) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        let h = c.host.clone().unwrap_or_default();
        let hv: Option<String> = match &c.host_hypervisor {
            Some(hv) => Some(hv.clone()),
            None => tx
                .fetch_optional("SELECT hypervisor_type FROM host WHERE uuid = $1", &[Val::from(h.as_str())])
                .await?
                .map(|r| r.try_get::<String, _>(0))
                .transpose()?,
        };
        c.on_host = Some(match hv.as_deref() {
            Some("Simulator") => OnHost::Simulator,
            Some("KVM") => OnHost::Kvm(Box::new(kvm::plan(tx, c, &h).await?)),
            other => {
                return Err(Error::Api(ErrorCode::new(
                    HOST_1005,
                    format!(
                        "cannot start vm[uuid:{}] on host[uuid:{h}, hypervisorType:{}]: creating VMs on this hypervisor is not supported yet",
                        c.vm_uuid,
                        other.unwrap_or("unknown")
                    ),
                )))
            }
        });
        Ok(())
    })
}

pub(super) fn plan_undo<'a>(_app: &'a App, _tx: &'a mut WriteTx, c: &'a mut Ctx) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        c.on_host = None;
        Ok(())
    })
}

/// Create the VM on its host through its agent, with no transaction open (a thick copy of an
/// image can take long). A failure is undone by [`instantiate_undo`] (the saga runner undoes a
/// remote step that started).
pub(super) fn instantiate_do<'a>(app: &'a App, c: &'a mut Ctx) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        match &c.on_host {
            Some(OnHost::Simulator) => {
                crate::hostagent::simulate_instantiate(&c.vm_uuid, c.strategy != "CreateStopped").await;
                Ok(())
            }
            Some(OnHost::Kvm(plan)) => kvm::instantiate(&kvm::with_credentials(&app.db, plan).await?).await,
            None => Err(Error::Internal(format!("vm[uuid:{}] has no instantiation plan", c.vm_uuid))),
        }
    })
}

/// Idempotent, and harmless when the instantiation never happened or stopped half-way: the
/// agent's destroy, network release and volume deletion all accept what is not there.
pub(super) fn instantiate_undo<'a>(app: &'a App, c: &'a mut Ctx) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        match &c.on_host {
            Some(OnHost::Simulator) => crate::hostagent::simulate_destroy(&c.vm_uuid),
            Some(OnHost::Kvm(plan)) => kvm::teardown(&kvm::with_credentials(&app.db, plan).await?).await,
            None => {}
        }
        Ok(())
    })
}

/// The final state: Running on its host (InstantStart), or Stopped with the host's capacity
/// given back and only lastHostUuid kept (CreateStopped).
pub(super) fn finish_do<'a>(_app: &'a App, tx: &'a mut WriteTx, c: &'a mut Ctx) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        let now = now_ms();
        let v = Val::from(c.vm_uuid.as_str());
        if c.strategy == "CreateStopped" {
            release_host(tx, &c.vm_uuid).await?;
            tx.execute(
                "UPDATE vm_instance SET state = 'Stopped', last_host_uuid = host_uuid, host_uuid = NULL, last_op_date = $1 \
                 WHERE uuid = $2",
                &[Val::I(now), v],
            )
            .await?;
        } else {
            tx.execute(
                "UPDATE vm_instance SET state = 'Running', last_host_uuid = host_uuid, last_op_date = $1 WHERE uuid = $2",
                &[Val::I(now), v],
            )
            .await?;
        }
        Ok(())
    })
}
