//! The VM lifecycle after creation: the state machine and start/stop/reboot/destroy/recover/
//! expunge/update.

use super::*;

// ---------------------------------------------------------------------------------------
// Lifecycle: the state machine (upstream AbstractVmInstance.allowedOperations), written once

/// The VM operations this node serves, with the upstream API message each one checks as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmOp {
    Start,
    Stop,
    Reboot,
    Destroy,
    Recover,
    Expunge,
}

impl VmOp {
    /// The upstream message class named in VM.1010.
    pub fn class(self) -> &'static str {
        match self {
            VmOp::Start => "org.zstack.header.vm.APIStartVmInstanceMsg",
            VmOp::Stop => "org.zstack.header.vm.APIStopVmInstanceMsg",
            VmOp::Reboot => "org.zstack.header.vm.APIRebootVmInstanceMsg",
            VmOp::Destroy => "org.zstack.header.vm.APIDestroyVmInstanceMsg",
            VmOp::Recover => "org.zstack.header.vm.APIRecoverVmInstanceMsg",
            VmOp::Expunge => "org.zstack.header.vm.APIExpungeVmInstanceMsg",
        }
    }

    /// The states that allow it, in upstream's registration order.
    pub fn allowed(self) -> &'static [&'static str] {
        match self {
            VmOp::Start => &["Created", "Running", "Stopped", "Crashed"],
            VmOp::Stop => &["Running", "Stopped", "Unknown", "Crashed", "Paused"],
            VmOp::Reboot => &["Running", "Crashed"],
            VmOp::Destroy => &[
                "Running",
                "Stopped",
                "Unknown",
                "Crashed",
                "Starting",
                "Migrating",
                "VolumeMigrating",
                "Stopping",
                "Rebooting",
                "Paused",
                "Pausing",
                "Resuming",
            ],
            VmOp::Recover | VmOp::Expunge => &["Destroyed"],
        }
    }

    /// The error upstream wraps VM.1010 in (`None`: VM.1010 itself).
    pub(super) fn wrapper(self) -> Option<Code> {
        match self {
            VmOp::Start => Some(rzstack_api::codes::VM_1001),
            VmOp::Stop => Some(rzstack_api::codes::VM_1002),
            VmOp::Reboot => Some(rzstack_api::codes::VM_1003),
            VmOp::Destroy => None,
            VmOp::Recover | VmOp::Expunge => Some(rzstack_api::codes::SYS_1006),
        }
    }

    pub fn allows(self, state: &str) -> bool {
        self.allowed().contains(&state)
    }

    /// VM.1010 with upstream's text (the allowed states printed as Java prints its HashSet).
    pub fn refused(self, state: &str) -> Error {
        let cause = ErrorCode::new(
            rzstack_api::codes::VM_1010,
            format!(
                "current vm instance state[{state}] doesn't allow to proceed message[{}], allowed states are [{}]",
                self.class(),
                java_hash_set_order(self.allowed()).join(", ")
            ),
        );
        match self.wrapper() {
            Some(w) => {
                let details = cause.details.clone().unwrap_or_default();
                Error::Api(ErrorCode::new(w, details).with_cause(cause))
            }
            None => Error::Api(cause),
        }
    }

    pub(super) fn check(self, state: &str) -> Result<()> {
        if self.allows(state) {
            Ok(())
        } else {
            Err(self.refused(state))
        }
    }
}

/// The iteration order of a `java.util.HashSet<String>` filled with `items` in order: by
/// bucket (spread String hash masked by the table size), ties in insertion order.
pub fn java_hash_set_order<'a>(items: &[&'a str]) -> Vec<&'a str> {
    let mut cap = 16usize;
    while items.len() > cap * 3 / 4 {
        cap *= 2;
    }
    let bucket = |s: &str| {
        let h = s.encode_utf16().fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)));
        let spread = (h as u32) ^ ((h as u32) >> 16);
        spread as usize & (cap - 1)
    };
    let mut v: Vec<&str> = items.to_vec();
    v.sort_by_key(|s| bucket(s));
    v
}

/// Per-VM action queue (upstream runs every operation of a VM in one chain task keyed by the
/// VM, its `syncSignature`): an action waits for the one before it on the same VM and then
/// runs against the state that one left, in arrival order (tokio's mutex is FIFO). The queue
/// lives in this management node's memory: actions on one VM submitted to different nodes are
/// not queued against each other; there the compare-and-set state changes still keep the VM
/// consistent (the later one may then be refused with VM.1010). Entries go when idle.
pub(super) mod queue {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};

    type Slot = Arc<tokio::sync::Mutex<()>>;

    fn slots() -> &'static Mutex<HashMap<String, Slot>> {
        static SLOTS: OnceLock<Mutex<HashMap<String, Slot>>> = OnceLock::new();
        SLOTS.get_or_init(Default::default)
    }

    fn lock_slots() -> std::sync::MutexGuard<'static, HashMap<String, Slot>> {
        match slots().lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// The VM's turn: held until dropped.
    pub struct Turn {
        vm: String,
        slot: Slot,
        guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    }

    pub async fn turn(vm: &str) -> Turn {
        let slot = lock_slots().entry(vm.to_string()).or_default().clone();
        let guard = slot.clone().lock_owned().await;
        Turn { vm: vm.to_string(), slot, guard: Some(guard) }
    }

    impl Drop for Turn {
        fn drop(&mut self) {
            drop(self.guard.take());
            let mut m = lock_slots();
            // only the map and this turn hold the slot: nobody waits, forget it
            if m.get(&self.vm).is_some_and(|s| Arc::ptr_eq(s, &self.slot) && Arc::strong_count(s) == 2) {
                m.remove(&self.vm);
            }
        }
    }

    /// VMs with a queue (tests and diagnostics).
    #[allow(dead_code)]
    pub fn len() -> usize {
        lock_slots().len()
    }
}

pub(super) async fn vm_state(tx: &mut WriteTx, uuid: &str) -> Result<Option<String>> {
    Ok(tx
        .fetch_optional("SELECT state FROM vm_instance WHERE uuid = $1", &[Val::from(uuid)])
        .await?
        .map(|r| r.try_get::<String, _>(0))
        .transpose()?)
}

pub(super) fn vm_not_found(uuid: &str) -> Error {
    Error::not_found(format!("vm instance[uuid:{uuid}] is not found"))
}

/// Move the VM from `from` to `to` (compare-and-set: a concurrent change makes it fail with
/// VM.1010 for the state found).
pub(super) async fn move_state(tx: &mut WriteTx, op: VmOp, uuid: &str, from: &str, to: &str) -> Result<()> {
    let n = tx
        .execute(
            "UPDATE vm_instance SET state = $1, last_op_date = $2 WHERE uuid = $3 AND state = $4",
            &[Val::from(to), Val::I(now_ms()), Val::from(uuid), Val::from(from)],
        )
        .await?;
    if n != 1 {
        let now = vm_state(tx, uuid).await?.ok_or_else(|| vm_not_found(uuid))?;
        return Err(op.refused(&now));
    }
    Ok(())
}

pub(super) fn uuid_of(msg: &Msg) -> String {
    msg.str("uuid").unwrap_or_default().to_string()
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct StartVm {
    pub(super) host_uuid: Option<String>,
    pub(super) cluster_uuid: Option<String>,
}

pub(super) async fn start_vm(app: App, msg: Msg) -> Result<Reply> {
    let uuid = uuid_of(&msg);
    let _turn = queue::turn(&uuid).await;
    let req: StartVm = msg.parse()?;
    if msg.replay {
        saga::unwind_for_job(&app, &msg.job_uuid).await?;
    }
    let row = app
        .db
        .fetch_optional("SELECT state, creation FROM vm_instance WHERE uuid = $1", &[Val::from(uuid.as_str())])
        .await?
        .ok_or_else(|| vm_not_found(&uuid))?;
    let state: String = row.try_get(0)?;
    VmOp::Start.check(&state)?;
    let wrap = |e: Error| {
        let cause = e.to_error_code();
        let details = cause.details.clone().unwrap_or_default();
        Error::Api(ErrorCode::new(rzstack_api::codes::VM_1001, details).with_cause(cause))
    };
    match state.as_str() {
        "Running" => {}
        "Created" => {
            let plan: Option<String> = row.try_get(1)?;
            let plan = plan.ok_or_else(|| Error::Internal(format!("vm[uuid:{uuid}] has no creation plan")))?;
            let mut ctx: Ctx = serde_json::from_str(&plan)
                .map_err(|e| Error::Internal(format!("vm[uuid:{uuid}] has an unreadable creation plan: {e}")))?;
            ctx.strategy = "InstantStart".into();
            if let Some(h) = req.host_uuid.clone() {
                ctx.designated_host = Some(h);
            } else if let Some(c) = req.cluster_uuid.clone() {
                ctx.cluster_uuid = Some(c);
            }
            saga::run(&app, &START_CREATED, &msg.job_uuid, &uuid, ctx).await.map_err(wrap)?;
        }
        _ => {
            // host and addresses in a transaction, QEMU on a KVM host outside it (steps.rs)
            let ctx = StartCtx {
                vm_uuid: uuid.clone(),
                host_uuid: req.host_uuid.clone(),
                cluster_uuid: req.cluster_uuid.clone(),
                ..StartCtx::default()
            };
            saga::run(&app, &START_STOPPED, &msg.job_uuid, &uuid, ctx).await.map_err(wrap)?;
        }
    }
    reply(&app, &uuid).await
}

/// Start a Stopped VM in one transaction: a host whose cluster reaches the root volume's
/// primary storage and every NIC's L2 network, its capacity reserved atomically; addresses
/// for NICs that lost theirs.
///
/// Host order (upstream `VmAllocateHostForStoppedVmFlow` + the strategy's chain): a given
/// host, a given cluster other than the VM's, or a VM without NICs → Designated; else the
/// VM's `allocatorStrategy` (LeastVmPreferred when it has none). Designated and
/// LastHostPreferred try the last host first (upstream `LastHostAllocatorFlow` keeps only the
/// last host when it passed the filters, capacity included), then the others in random order;
/// LeastVmPreferred orders by running VMs per host (ties: the last host first, then random);
/// Default is random. A host whose reservation fails is skipped for the next one.
/// The VM is left Starting on the returned host; the start saga (steps.rs) has its agent start
/// it outside the transaction, then marks it Running.
pub(super) async fn start_stopped(app: &App, tx: &mut WriteTx, uuid: &str, req: &StartVm) -> Result<String> {
    move_state(tx, VmOp::Start, uuid, "Stopped", "Starting").await?;
    let vm = tx
        .fetch_optional(
            "SELECT cpu_num, memory_size, last_host_uuid, root_volume_uuid, hypervisor_type, allocator_strategy, \
             cluster_uuid, (SELECT COUNT(*) FROM vm_nic n WHERE n.vm_instance_uuid = vm_instance.uuid), \
             COALESCE((SELECT r.host_uuid FROM volume v JOIN local_storage_resource_ref r ON r.resource_uuid = v.uuid \
             WHERE v.vm_instance_uuid = vm_instance.uuid \
             ORDER BY CASE WHEN v.type = 'Root' THEN 0 ELSE 1 END, v.device_id, v.uuid LIMIT 1), \
             CASE WHEN EXISTS (SELECT 1 FROM volume v JOIN primary_storage p ON p.uuid = v.primary_storage_uuid \
             WHERE v.vm_instance_uuid = vm_instance.uuid AND p.type = 'LocalStorage') THEN last_host_uuid END) \
             FROM vm_instance WHERE uuid = $1",
            &[Val::from(uuid)],
        )
        .await?
        .ok_or_else(|| vm_not_found(uuid))?;
    let cpu: i64 = vm.try_get(0)?;
    let mem: i64 = vm.try_get(1)?;
    let last: Option<String> = vm.try_get(2)?;
    let root: Option<String> = vm.try_get(3)?;
    let hv: Option<String> = vm.try_get(4)?;
    let strategy: Option<String> = vm.try_get(5)?;
    let vm_cluster: Option<String> = vm.try_get(6)?;
    let nic_count: i64 = vm.try_get(7)?;
    // the host whose LocalStorage disk holds the VM's volumes (its root volume's ref first; a
    // VM recorded before refs existed: its last host)
    let local_host: Option<String> = vm.try_get(8)?;
    let mut vals = vec![Val::from(uuid), Val::from(root.clone()), Val::from(hv.unwrap_or_else(|| "Simulator".into()))];
    let mut filter = String::from(
        "h.state = 'Enabled' AND h.status = 'Connected' AND h.hypervisor_type = $3 \
         AND EXISTS (SELECT 1 FROM primary_storage_cluster_ref r JOIN volume v ON v.primary_storage_uuid = r.primary_storage_uuid \
         WHERE v.uuid = $2 AND r.cluster_uuid = h.cluster_uuid) \
         AND NOT EXISTS (SELECT 1 FROM vm_nic n JOIN l3_network l ON l.uuid = n.l3_network_uuid WHERE n.vm_instance_uuid = $1 \
         AND NOT EXISTS (SELECT 1 FROM l2_network_cluster_ref c WHERE c.l2_network_uuid = l.l2_network_uuid \
         AND c.cluster_uuid = h.cluster_uuid))",
    );
    if let Some(h) = &req.host_uuid {
        vals.push(Val::from(h.as_str()));
        filter += &format!(" AND h.uuid = ${}", vals.len());
    } else if let Some(c) = &req.cluster_uuid {
        vals.push(Val::from(c.as_str()));
        filter += &format!(" AND h.cluster_uuid = ${}", vals.len());
    }
    let designated = req.host_uuid.is_some()
        || req.cluster_uuid.as_ref().is_some_and(|c| Some(c) != vm_cluster.as_ref())
        || nic_count == 0;
    let strategy = if designated {
        "DesignatedHostAllocatorStrategy"
    } else {
        strategy.as_deref().unwrap_or("LeastVmPreferredHostAllocatorStrategy")
    };
    // the local-storage filter comes last (upstream LocalStorageAllocatorFactory on start): only
    // the host holding the files, if it passed the others
    let unpinned = (filter.clone(), vals.len());
    if let Some(h) = &local_host {
        vals.push(Val::from(h.as_str()));
        filter += &format!(" AND h.uuid = ${}", vals.len());
    }
    vals.push(Val::from(last.unwrap_or_default()));
    let last_first = format!("CASE WHEN h.uuid = ${} THEN 0 ELSE 1 END", vals.len());
    let order = match strategy {
        "DesignatedHostAllocatorStrategy" | "LastHostPreferredAllocatorStrategy" => format!("{last_first}, random()"),
        s if s.contains("LeastVmPreferred") => {
            format!("(SELECT COUNT(*) FROM vm_instance o WHERE o.host_uuid = h.uuid), {last_first}, random()")
        }
        _ => "random()".to_string(),
    };
    let hosts = tx
        .fetch_all(
            &format!("SELECT h.uuid, h.cluster_uuid, h.zone_uuid FROM host h WHERE {filter} ORDER BY {order}"),
            &vals,
        )
        .await?;
    let mut chosen = None;
    for h in hosts {
        let host: String = h.try_get(0)?;
        if crate::resources::host::reserve(app, tx, &host, cpu, mem).await? {
            chosen = Some((host, h.try_get::<String, _>(1)?, h.try_get::<String, _>(2)?));
            break;
        }
    }
    let Some((host, cluster, zone)) = chosen else {
        if let Some(h) = &local_host {
            // another host could take it: the files pin it to one that cannot
            let (f, n) = &unpinned;
            let mut v = vals[..*n].to_vec();
            v.push(Val::I(cpu));
            v.push(Val::I(mem));
            let others = tx
                .fetch_optional(
                    &format!(
                        "SELECT COUNT(*) FROM host h WHERE {f} AND h.available_cpu >= ${} AND h.available_memory >= ${m} \
                         AND h.total_physical_memory > ${m}",
                        n + 1,
                        m = n + 2
                    ),
                    &v,
                )
                .await?
                .map(|r| r.try_get::<i64, _>(0))
                .transpose()?
                .unwrap_or(0);
            if others > 0 {
                return Err(host_alloc_error(format!(
                    "the vm[uuid: {uuid}] using local primary storage can only be started on the host[uuid: {h}], but the \
                     host is either not having enough CPU/memory/GPU/VFNIC or in the state[Enabled] or status[Connected] \
                     to start the vm"
                )));
            }
        }
        return Err(host_alloc_error(format!("no host having cpu[{cpu}], memory[{mem} bytes] found")));
    };
    tx.execute(
        "UPDATE vm_instance SET state = 'Starting', host_uuid = $1, last_host_uuid = $1, cluster_uuid = $2, zone_uuid = $3, \
         reserved_host_uuid = $1, reserved_cpu = $4, reserved_memory = $5, last_op_date = $6 WHERE uuid = $7",
        &[
            Val::from(host.as_str()),
            Val::from(cluster),
            Val::from(zone),
            Val::I(cpu),
            Val::I(mem),
            Val::I(now_ms()),
            Val::from(uuid),
        ],
    )
    .await?;
    // NICs without an address (a recovered VM): allocate again, the static IP if tagged
    let nics = tx
        .fetch_all(
            "SELECT uuid, l3_network_uuid FROM vm_nic WHERE vm_instance_uuid = $1 AND used_ip_uuid IS NULL ORDER BY device_id",
            &[Val::from(uuid)],
        )
        .await?;
    for n in nics {
        let nic: String = n.try_get(0)?;
        let l3: String = n.try_get(1)?;
        let tag = tx
            .fetch_optional(
                "SELECT tag FROM system_tag WHERE resource_uuid = $1 AND tag LIKE $2",
                &[Val::from(uuid), Val::S(format!("staticIp::{l3}::%"))],
            )
            .await?
            .map(|r| r.try_get::<String, _>(0))
            .transpose()?;
        let required = tag.as_deref().and_then(|t| t.rsplit("::").next()).map(str::to_string);
        let ip_uuid = new_uuid();
        let (ip, netmask, gateway) = allocate_ip(tx, &l3, &nic, &ip_uuid, required.as_deref()).await?;
        tx.execute(
            "UPDATE vm_nic SET used_ip_uuid = $1, ip = $2, netmask = $3, gateway = $4, last_op_date = $5 WHERE uuid = $6",
            &[
                Val::from(ip_uuid.as_str()),
                Val::from(ip),
                Val::from(netmask),
                Val::from(gateway),
                Val::I(now_ms()),
                Val::from(nic.as_str()),
            ],
        )
        .await?;
    }
    Ok(host)
}

pub(super) async fn stop_vm(app: App, msg: Msg) -> Result<Reply> {
    let uuid = uuid_of(&msg);
    let _turn = queue::turn(&uuid).await;
    // A guest on a KVM host is powered off by its agent first (outside the write transaction).
    if matches!(one_row(&app, "SELECT state FROM vm_instance WHERE uuid = $1", &uuid).await?, Some(r) if {
        let st: String = r.try_get(0)?;
        VmOp::Stop.check(&st).is_ok() && st != "Stopped"
    }) {
        kvm::stop_on_host(&app.db, &uuid, msg.str("type") == Some("cold")).await?;
    }
    let mut tx = app.db.begin_write().await?;
    let state = vm_state(&mut tx, &uuid).await?.ok_or_else(|| vm_not_found(&uuid))?;
    VmOp::Stop.check(&state)?;
    if state != "Stopped" {
        // grace and cold end the same way for a simulated guest
        move_state(&mut tx, VmOp::Stop, &uuid, &state, "Stopped").await?;
        release_host(&mut tx, &uuid).await?;
        tx.execute(
            "UPDATE vm_instance SET last_host_uuid = COALESCE(host_uuid, last_host_uuid), host_uuid = NULL WHERE uuid = $1",
            &[Val::from(uuid.as_str())],
        )
        .await?;
        tx.commit().await?;
    } else {
        drop(tx);
    }
    reply(&app, &uuid).await
}

pub(super) async fn reboot_vm(app: App, msg: Msg) -> Result<Reply> {
    let uuid = uuid_of(&msg);
    let _turn = queue::turn(&uuid).await;
    // A guest on a KVM host is rebooted by its agent first (outside the write transaction).
    if let Some(r) = one_row(&app, "SELECT state FROM vm_instance WHERE uuid = $1", &uuid).await? {
        let st: String = r.try_get(0)?;
        VmOp::Reboot.check(&st)?;
        kvm::reboot_on_host(&app.db, &uuid).await?;
    }
    let mut tx = app.db.begin_write().await?;
    let state = vm_state(&mut tx, &uuid).await?.ok_or_else(|| vm_not_found(&uuid))?;
    VmOp::Reboot.check(&state)?;
    // Rebooting → Running; a simulated guest reboots at once
    move_state(&mut tx, VmOp::Reboot, &uuid, &state, "Running").await?;
    tx.commit().await?;
    reply(&app, &uuid).await
}

/// A global config's value as stored (every node reads the same row), else its default.
pub(super) async fn stored_config(db_tx: &mut WriteTx, def: &crate::globals::ConfigDef) -> Result<String> {
    Ok(db_tx
        .fetch_optional(
            "SELECT value FROM global_config WHERE category = $1 AND name = $2",
            &[Val::from(def.category), Val::from(def.name)],
        )
        .await?
        .map(|r| r.try_get::<String, _>(0))
        .transpose()?
        .unwrap_or_else(|| def.default.to_string()))
}

/// DestroyVmInstance under `vm.deletionPolicy` (upstream `VmInstanceBase.doDestroy`):
/// - Delay (default) and Never: Destroyed, host capacity and IP addresses given back (NICs
///   stay, without address), the root volume marked Deleted (its primary-storage capacity is
///   held until expunge), data volumes detached. Delay VMs are expunged by the periodic task
///   after `vm.expungePeriod`; Never VMs only by ExpungeVmInstance.
/// - Direct: the same, then expunged in the same transaction (no Destroyed row is left).
///
/// A Created VM (nothing allocated) is removed at once (policy DBOnly); a Destroyed VM is a
/// success.
pub(super) async fn destroy_vm(app: App, msg: Msg) -> Result<Reply> {
    let uuid = uuid_of(&msg);
    let _turn = queue::turn(&uuid).await;
    let mut tx = app.db.begin_write().await?;
    let Some(state) = vm_state(&mut tx, &uuid).await? else {
        return Ok(Reply::empty());
    };
    match state.as_str() {
        "Destroyed" => return Ok(Reply::empty()),
        "Created" => {
            let n = tx
                .execute("DELETE FROM vm_instance WHERE uuid = $1 AND state = 'Created'", &[Val::from(uuid.as_str())])
                .await?;
            if n != 1 {
                let now = vm_state(&mut tx, &uuid).await?.unwrap_or_default();
                return Err(VmOp::Destroy.refused(&now));
            }
            remove_vm_rows(&mut tx, &uuid).await?;
            tx.commit().await?;
            return Ok(Reply::empty());
        }
        _ => VmOp::Destroy.check(&state)?,
    }
    let direct = stored_config(&mut tx, &crate::globals::VM_DELETION_POLICY).await? == "Direct";
    // A guest on a KVM host is destroyed by its agent first (outside the write transaction).
    drop(tx);
    kvm::destroy_on_host(&app.db, &uuid).await?;
    // Direct: the root volume file on a KVM host goes once the rows are gone
    let file = if direct { kvm::expunge_target(&app.db, &uuid).await? } else { None };
    let mut tx = app.db.begin_write().await?;
    let state = vm_state(&mut tx, &uuid).await?.ok_or_else(|| vm_not_found(&uuid))?;
    if state == "Destroyed" {
        return Ok(Reply::empty());
    }
    VmOp::Destroy.check(&state)?;
    move_state(&mut tx, VmOp::Destroy, &uuid, &state, "Destroyed").await?;
    release_host(&mut tx, &uuid).await?;
    let now = now_ms();
    let v = Val::from(uuid.as_str());
    tx.execute(
        "UPDATE vm_instance SET last_host_uuid = COALESCE(host_uuid, last_host_uuid), host_uuid = NULL WHERE uuid = $1",
        std::slice::from_ref(&v),
    )
    .await?;
    tx.execute(
        "DELETE FROM used_ip WHERE vm_nic_uuid IN (SELECT uuid FROM vm_nic WHERE vm_instance_uuid = $1)",
        std::slice::from_ref(&v),
    )
    .await?;
    tx.execute(
        "UPDATE vm_nic SET used_ip_uuid = NULL, ip = NULL, netmask = NULL, gateway = NULL, last_op_date = $1 \
         WHERE vm_instance_uuid = $2",
        &[Val::I(now), v.clone()],
    )
    .await?;
    tx.execute(
        "UPDATE volume SET status = 'Deleted', last_op_date = $1 WHERE vm_instance_uuid = $2 AND type = 'Root'",
        &[Val::I(now), v.clone()],
    )
    .await?;
    tx.execute(
        "UPDATE volume SET vm_instance_uuid = NULL, device_id = NULL, last_vm_instance_uuid = $2, \
         last_detach_date = $1, last_op_date = $1 WHERE vm_instance_uuid = $2 AND type = 'Data'",
        &[Val::I(now), v],
    )
    .await?;
    if direct {
        tx.execute("DELETE FROM vm_instance WHERE uuid = $1 AND state = 'Destroyed'", &[Val::from(uuid.as_str())])
            .await?;
        remove_vm_rows(&mut tx, &uuid).await?;
    }
    tx.commit().await?;
    if let Some((agent, path)) = file {
        kvm::delete_file(&agent, &path).await;
    }
    Ok(Reply::empty())
}

/// The rows of a VM besides its `vm_instance` row: NICs and their addresses, CD-ROMs, its
/// root volume (capacity back to the primary storage), tags, SSH key refs, owner records.
pub(super) async fn remove_vm_rows(tx: &mut WriteTx, uuid: &str) -> Result<()> {
    let v = Val::from(uuid);
    tx.execute(
        "DELETE FROM used_ip WHERE vm_nic_uuid IN (SELECT uuid FROM vm_nic WHERE vm_instance_uuid = $1)",
        std::slice::from_ref(&v),
    )
    .await?;
    let nics = tx.fetch_all("SELECT uuid FROM vm_nic WHERE vm_instance_uuid = $1", std::slice::from_ref(&v)).await?;
    for n in nics {
        let nic: String = n.try_get(0)?;
        crate::resources::tag::delete_for_resource(tx, &nic).await?;
    }
    tx.execute("DELETE FROM vm_nic WHERE vm_instance_uuid = $1", std::slice::from_ref(&v)).await?;
    tx.execute("DELETE FROM vm_cdrom WHERE vm_instance_uuid = $1", std::slice::from_ref(&v)).await?;
    let vols = tx
        .fetch_all(
            "SELECT uuid, primary_storage_uuid, reserved_size FROM volume WHERE vm_instance_uuid = $1 AND type = 'Root'",
            std::slice::from_ref(&v),
        )
        .await?;
    for r in vols {
        let vol: String = r.try_get(0)?;
        let ps: Option<String> = r.try_get(1)?;
        let size: i64 = r.try_get(2)?;
        let n = tx.execute("DELETE FROM volume WHERE uuid = $1", &[Val::from(vol.as_str())]).await?;
        if let (1, Some(ps)) = (n, ps) {
            tx.execute(
                "UPDATE primary_storage SET available_capacity = available_capacity + $1, last_op_date = $2 WHERE uuid = $3",
                &[Val::I(size), Val::I(now_ms()), Val::from(ps.as_str())],
            )
            .await?;
        }
        crate::resources::volume::forget_local_files(tx, &vol).await?;
        tx.execute("DELETE FROM volume_snapshot WHERE volume_uuid = $1", &[Val::from(vol.as_str())]).await?;
        crate::resources::tag::delete_for_resource(tx, &vol).await?;
        crate::resources::disown(tx, &vol).await?;
    }
    let tpms = tx.fetch_all("SELECT uuid FROM tpm WHERE vm_instance_uuid = $1", std::slice::from_ref(&v)).await?;
    for r in tpms {
        let t: String = r.try_get(0)?;
        tx.execute("DELETE FROM tpm WHERE uuid = $1", &[Val::from(t.as_str())]).await?;
        crate::resources::tag::delete_for_resource(tx, &t).await?;
        crate::resources::disown(tx, &t).await?;
    }
    tx.execute("DELETE FROM ssh_key_pair_ref WHERE resource_uuid = $1", &[v]).await?;
    crate::resources::tag::delete_for_resource(tx, uuid).await?;
    crate::resources::disown(tx, uuid).await?;
    Ok(())
}

pub(super) async fn recover_vm(app: App, msg: Msg) -> Result<Reply> {
    let uuid = uuid_of(&msg);
    let _turn = queue::turn(&uuid).await;
    let mut tx = app.db.begin_write().await?;
    let state = vm_state(&mut tx, &uuid).await?.ok_or_else(|| vm_not_found(&uuid))?;
    VmOp::Recover.check(&state)?;
    move_state(&mut tx, VmOp::Recover, &uuid, "Destroyed", "Stopped").await?;
    tx.execute(
        "UPDATE volume SET status = 'Ready', last_op_date = $1 WHERE vm_instance_uuid = $2 AND type = 'Root'",
        &[Val::I(now_ms()), Val::from(uuid.as_str())],
    )
    .await?;
    tx.commit().await?;
    reply(&app, &uuid).await
}

pub(super) async fn expunge_vm(app: App, msg: Msg) -> Result<Reply> {
    let uuid = uuid_of(&msg);
    let _turn = queue::turn(&uuid).await;
    expunge(&app, &uuid).await?;
    Ok(Reply::empty())
}

/// Expunge a Destroyed VM: its rows go, its root volume's capacity comes back (and the file
/// on a KVM host goes). A VM that is gone already is a success (a replayed job).
async fn expunge(app: &App, uuid: &str) -> Result<()> {
    // the root volume file on a KVM host goes once the rows are gone
    let file = kvm::expunge_target(&app.db, uuid).await?;
    let mut tx = app.db.begin_write().await?;
    let Some(state) = vm_state(&mut tx, uuid).await? else {
        return Ok(());
    };
    VmOp::Expunge.check(&state)?;
    let n = tx.execute("DELETE FROM vm_instance WHERE uuid = $1 AND state = 'Destroyed'", &[Val::from(uuid)]).await?;
    if n != 1 {
        let now = vm_state(&mut tx, uuid).await?.unwrap_or_default();
        return Err(VmOp::Expunge.refused(&now));
    }
    remove_vm_rows(&mut tx, uuid).await?;
    tx.commit().await?;
    if let Some((agent, path)) = file {
        kvm::delete_file(&agent, &path).await;
    }
    Ok(())
}

/// One round of upstream's expunge-vm task: unless `vm.deletionPolicy` is Never, every VM
/// Destroyed for at least `vm.expungePeriod` seconds (by its lastOpDate) is expunged. Every
/// management node runs it; the compare-and-set delete makes a VM go exactly once.
pub(super) async fn expunge_due(app: &App) -> Result<usize> {
    let mut tx = app.db.begin_write().await?;
    let policy = stored_config(&mut tx, &crate::globals::VM_DELETION_POLICY).await?;
    let period: i64 = stored_config(&mut tx, &crate::globals::VM_EXPUNGE_PERIOD).await?.parse().unwrap_or(604_800);
    drop(tx);
    if policy == "Never" {
        return Ok(0);
    }
    let due = app
        .db
        .fetch_all(
            "SELECT uuid FROM vm_instance WHERE state = 'Destroyed' AND last_op_date <= $1 ORDER BY last_op_date",
            &[Val::I(now_ms().saturating_sub(period.saturating_mul(1000)))],
        )
        .await?;
    let mut n = 0;
    for r in due {
        let uuid: String = r.try_get(0)?;
        let _turn = queue::turn(&uuid).await;
        match expunge(app, &uuid).await {
            Ok(()) => n += 1,
            Err(e) => tracing::warn!(vm = %uuid, error = %e, "expunging a destroyed vm failed"),
        }
    }
    Ok(n)
}

/// Run [`expunge_due`] every `vm.expungeInterval` seconds (the value is read each second, so a
/// change takes effect without a restart).
pub fn start_expunge_task(app: App) {
    tokio::spawn(async move {
        let mut last = std::time::Instant::now();
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            let interval = app.globals.get_i64(&crate::globals::VM_EXPUNGE_INTERVAL).max(1) as u64;
            if last.elapsed() < std::time::Duration::from_secs(interval) {
                continue;
            }
            last = std::time::Instant::now();
            match expunge_due(&app).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(expunged = n, "expunged destroyed vms"),
                Err(e) => tracing::warn!(error = %e, "vm expunge round failed"),
            }
        }
    });
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct UpdateVm {
    pub(super) name: Option<String>,
    pub(super) description: Option<String>,
    pub(super) state: Option<String>,
    pub(super) default_l3_network_uuid: Option<String>,
    pub(super) platform: Option<String>,
    pub(super) cpu_num: Option<i64>,
    pub(super) memory_size: Option<i64>,
    pub(super) reserved_memory_size: Option<i64>,
    pub(super) guest_os_type: Option<String>,
}

pub(super) async fn update_vm(app: App, msg: Msg) -> Result<Reply> {
    let uuid = uuid_of(&msg);
    let _turn = queue::turn(&uuid).await;
    let req: UpdateVm = msg.parse()?;
    if req.state.is_some() {
        return Err(Error::argerr(
            "parameter[state] of UpdateVmInstance is not supported by this management node: use StartVmInstance or StopVmInstance",
        ));
    }
    let mut tx = app.db.begin_write().await?;
    let vm = tx
        .fetch_optional(
            "SELECT state, cpu_num, memory_size FROM vm_instance WHERE uuid = $1",
            &[Val::from(uuid.as_str())],
        )
        .await?
        .ok_or_else(|| vm_not_found(&uuid))?;
    let state: String = vm.try_get(0)?;
    let cpu: i64 = vm.try_get(1)?;
    let mem: i64 = vm.try_get(2)?;
    if let Some(r) = req.reserved_memory_size {
        let m = req.memory_size.unwrap_or(mem);
        if r > m {
            return Err(Error::argerr(format!("reservedMemorySize[{r}] is greater than memorySize[{m}]")));
        }
    }
    if req.cpu_num.is_some() || req.memory_size.is_some() {
        if state != "Stopped" {
            if req.cpu_num.is_some_and(|c| c != cpu) {
                return Err(Error::argerr(
                    "the VM cannot do cpu hot plug because of disabling cpu hot plug. Please stop the VM then do the cpu hot plug again",
                ));
            }
            if req.memory_size.is_some_and(|m| m != mem) {
                return Err(Error::argerr(
                    "the VM cannot do memory hot plug because of disabling memory hot plug. Please stop the VM then do the memory hot plug again",
                ));
            }
        }
        if state != "Stopped" && state != "Running" {
            return Err(Error::operr(format!(
                "The state of vm[uuid:{uuid}] is {state}. Only these state[Running,Stopped] is allowed to update cpu or memory."
            )));
        }
    }
    if let Some(l3) = &req.default_l3_network_uuid {
        let attached = tx
            .fetch_optional(
                "SELECT 1 FROM vm_nic WHERE vm_instance_uuid = $1 AND l3_network_uuid = $2",
                &[Val::from(uuid.as_str()), Val::from(l3.as_str())],
            )
            .await?;
        if attached.is_none() {
            return Err(Error::argerr(format!(
                "the L3 network[uuid:{l3}] is not attached to the vm[uuid:{uuid}], it cannot be its default L3 network"
            )));
        }
    }
    let mut sets = Vec::new();
    let mut vals: Vec<Val> = Vec::new();
    let mut put = |col: &str, v: Val| {
        vals.push(v);
        sets.push(format!("{col} = ${}", vals.len()));
    };
    if let Some(x) = &req.name {
        put("name", Val::from(x.as_str()));
    }
    if let Some(x) = &req.description {
        put("description", Val::from(x.as_str()));
    }
    if let Some(x) = &req.default_l3_network_uuid {
        put("default_l3_network_uuid", Val::from(x.as_str()));
    }
    if let Some(x) = &req.platform {
        put("platform", Val::from(x.as_str()));
    }
    if let Some(x) = &req.guest_os_type {
        put("guest_os_type", Val::from(x.as_str()));
    }
    if let Some(x) = req.cpu_num {
        put("cpu_num", Val::I(x));
    }
    if let Some(x) = req.memory_size {
        put("memory_size", Val::I(x));
    }
    if let Some(x) = req.reserved_memory_size {
        put("reserved_memory_size", Val::from(if x == 0 { None } else { Some(x) }));
    }
    put("last_op_date", Val::I(now_ms()));
    vals.push(Val::from(uuid.as_str()));
    vals.push(Val::from(state.as_str()));
    let sql = format!(
        "UPDATE vm_instance SET {} WHERE uuid = ${} AND state = ${}",
        sets.join(", "),
        vals.len() - 1,
        vals.len()
    );
    let n = tx.execute(&sql, &vals).await?;
    if n != 1 {
        return Err(Error::operr(format!("the state of vm[uuid:{uuid}] changed while it was being updated")));
    }
    tx.commit().await?;
    reply(&app, &uuid).await
}
