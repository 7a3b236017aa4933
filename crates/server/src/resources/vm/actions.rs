//! VM actions after creation: ChangeInstanceOffering, AttachL3NetworkToVm,
//! DetachL3NetworkFromVm, GetVmAttachableL3Network, SetVmStaticIp, AttachIsoToVmInstance,
//! DetachIsoFromVmInstance, GetVmConsoleAddress. Each change runs in the VM's turn
//! ([`queue::turn`]); no write transaction stays open while a KVM host works.
//!
//! Running KVM VMs: NICs are hot-plugged/unplugged over QMP (a virtio NIC QEMU started with
//! sits on a PCIe root port of its own and is unplugged like a hot-plugged one; an e1000 NIC of
//! a VM without virtio sits on the root bus: the agent refuses, nothing changes; upstream
//! refuses any detach on a KVM VM whose platform is not paravirtualized), a static IP change
//! updates the host's DHCP lease; an ISO change is a medium change in the VM's CD-ROM drive over
//! QMP (the ISO cached on the host first) and the console is QEMU's VNC display, whose port the
//! agent reports. Stopped VMs and simulator VMs are served fully (a simulator VM has no console).

use super::*;
use crate::hostagent::KvmAgentClient;

fn vm_uuid(msg: &Msg) -> String {
    msg.str("vmInstanceUuid").unwrap_or_default().to_string()
}

// ---------------------------------------------------------------------------------------
// ChangeInstanceOffering

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChangeOffering {
    instance_offering_uuid: String,
}

/// Upstream: with `vm.numa` off (the default; this node has no online modification) only a
/// Stopped VM may change its offering; the new CPU/memory take effect at its next start (a
/// Stopped VM holds no host capacity, so none moves now). The VM must know a host (current or
/// last), as upstream's spec needs one.
pub(super) async fn change_instance_offering(app: App, msg: Msg) -> Result<Reply> {
    let uuid = vm_uuid(&msg);
    let _turn = queue::turn(&uuid).await;
    let req: ChangeOffering = msg.parse()?;
    let mut tx = app.db.begin_write().await?;
    let vm = tx
        .fetch_optional(
            "SELECT state, host_uuid, last_host_uuid FROM vm_instance WHERE uuid = $1",
            &[Val::from(uuid.as_str())],
        )
        .await?
        .ok_or_else(|| vm_not_found(&uuid))?;
    let state: String = vm.try_get(0)?;
    let host: Option<String> = vm.try_get(1)?;
    let last_host: Option<String> = vm.try_get(2)?;
    if state != "Stopped" {
        return Err(Error::argerr(
            "the VM cannot do online cpu/memory update because of disabling Instance Offering Online Modification. Please stop the VM then do the cpu/memory update again",
        ));
    }
    if host.is_none() && last_host.is_none() {
        return Err(Error::operr(format!("failed to find host of vm[uuid={uuid}]")));
    }
    let off = tx
        .fetch_optional(
            "SELECT cpu_num, memory_size, allocator_strategy FROM instance_offering WHERE uuid = $1",
            &[Val::from(req.instance_offering_uuid.as_str())],
        )
        .await?
        .ok_or_else(|| {
            Error::not_found(format!("instance offering[uuid:{}] is not found", req.instance_offering_uuid))
        })?;
    let cpu: i64 = off.try_get(0)?;
    let mem: i64 = off.try_get(1)?;
    let strategy: Option<String> = off.try_get(2)?;
    let n = tx
        .execute(
            "UPDATE vm_instance SET cpu_num = $1, memory_size = $2, allocator_strategy = $3, instance_offering_uuid = $4, \
             last_op_date = $5 WHERE uuid = $6 AND state = 'Stopped'",
            &[
                Val::I(cpu),
                Val::I(mem),
                Val::from(strategy),
                Val::from(req.instance_offering_uuid.as_str()),
                Val::I(now_ms()),
                Val::from(uuid.as_str()),
            ],
        )
        .await?;
    if n != 1 {
        return Err(Error::operr(format!("the state of vm[uuid:{uuid}] changed while it was being updated")));
    }
    tx.commit().await?;
    reply(&app, &uuid).await
}

// ---------------------------------------------------------------------------------------
// AttachL3NetworkToVm / DetachL3NetworkFromVm

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AttachL3 {
    l3_network_uuid: String,
    static_ip: Option<String>,
    driver_type: Option<String>,
    custom_mac: Option<String>,
}

fn kvm_running_refused(uuid: &str, what: &str) -> Error {
    Error::operr(format!(
        "unable to {what} on the running vm[uuid:{uuid}]: this management node cannot do it on a running KVM vm; stop the vm first"
    ))
}

pub(super) async fn attach_l3(app: App, msg: Msg) -> Result<Reply> {
    let uuid = vm_uuid(&msg);
    let _turn = queue::turn(&uuid).await;
    let req: AttachL3 = msg.parse()?;
    // accepted by the API's shape, not honoured here yet: refused rather than ignored
    if msg.fields.get("vmNicParams").is_some_and(|v| !v.is_null() && v.as_str() != Some("")) {
        return Err(Error::argerr(
            "vmNicParams is not supported by AttachL3NetworkToVm on this management node; use staticIp, customMac and driverType",
        ));
    }
    let l3 = req.l3_network_uuid.as_str();
    let mut tx = app.db.begin_write().await?;
    let vm = tx
        .fetch_optional(
            "SELECT state, type, hypervisor_type, internal_id, default_l3_network_uuid, host_uuid FROM vm_instance \
             WHERE uuid = $1",
            &[Val::from(uuid.as_str())],
        )
        .await?
        .ok_or_else(|| vm_not_found(&uuid))?;
    let state: String = vm.try_get(0)?;
    let vm_type: Option<String> = vm.try_get(1)?;
    let hv: Option<String> = vm.try_get(2)?;
    let internal_id: i64 = vm.try_get(3)?;
    let default_l3: Option<String> = vm.try_get(4)?;
    let host: Option<String> = vm.try_get(5)?;
    if state != "Running" && state != "Stopped" {
        return Err(Error::operr(format!(
            "unable to attach a L3 network. The vm[uuid: {uuid}] is not Running or Stopped; the current state is {state}"
        )));
    }
    let l3row = tx
        .fetch_optional(
            "SELECT l2_network_uuid, state, system, enable_ipam, \
             (SELECT COUNT(*) FROM ip_range r WHERE r.l3_network_uuid = l.uuid) FROM l3_network l WHERE uuid = $1",
            &[Val::from(l3)],
        )
        .await?
        .ok_or_else(|| Error::not_found(format!("l3 network[uuid:{l3}] is not found")))?;
    let l2: String = l3row.try_get(0)?;
    let l3_state: String = l3row.try_get(1)?;
    let system: i64 = l3row.try_get(2)?;
    let ipam: Option<i64> = l3row.try_get(3)?;
    let ranges: i64 = l3row.try_get(4)?;
    let ipam = ipam.unwrap_or(1) != 0;
    if ranges == 0 && ipam {
        return Err(Error::operr(format!(
            "unable to attach a L3 network. The L3 network[uuid:{l3}] doesn't has have ip range"
        )));
    }
    let clusters = tx
        .fetch_optional("SELECT 1 FROM l2_network_cluster_ref WHERE l2_network_uuid = $1", &[Val::from(l2.as_str())])
        .await?;
    if clusters.is_none() {
        return Err(Error::operr(format!(
            "unable to attach a L3 network. The L3 network[uuid:[{l3}]] are belonged to l2 networks [uuids:[{l2}]] that have not been attached to any cluster"
        )));
    }
    let attached = tx
        .fetch_optional(
            "SELECT 1 FROM vm_nic WHERE vm_instance_uuid = $1 AND l3_network_uuid = $2",
            &[Val::from(uuid.as_str()), Val::from(l3)],
        )
        .await?;
    if attached.is_some() {
        // vm.multivNics is off by default: one NIC per L3
        return Err(Error::operr(format!(
            "unable to attach a L3 network. The L3 network[uuid:[{l3}]] is already attached to the vm[uuid: {uuid}]"
        )));
    }
    if l3_state == "Disabled" {
        return Err(Error::operr(format!("unable to attach a L3 network. The L3 network[uuid:{l3}] is disabled")));
    }
    if vm_type.as_deref().unwrap_or("UserVm") == "UserVm" && system != 0 {
        return Err(Error::operr(format!(
            "unable to attach a L3 network. The L3 network[uuid:{l3}] is a system network and vm is a user vm"
        )));
    }
    if let Some(ip) = &req.static_ip {
        let n = crate::resources::l3::ipv4(ip).map(i64::from);
        let in_range = match n {
            Some(n) => tx
                .fetch_optional(
                    "SELECT 1 FROM ip_range WHERE l3_network_uuid = $1 AND ip_version = 4 AND start_ip_long <= $2 \
                     AND end_ip_long >= $2",
                    &[Val::from(l3), Val::I(n)],
                )
                .await?
                .is_some(),
            None => false,
        };
        if !in_range && ipam {
            return Err(Error::argerr(format!(
                "the static IP[{ip}] is not in any IP range of the L3 network[uuid:{l3}]"
            )));
        }
        let used = tx
            .fetch_optional(
                "SELECT 1 FROM used_ip WHERE l3_network_uuid = $1 AND ip = $2",
                &[Val::from(l3), Val::from(ip.as_str())],
            )
            .await?;
        if used.is_some() {
            return Err(Error::operr(format!("the static IP[{ip}] has been occupied on the L3 network[uuid:{l3}]")));
        }
    }
    // a Running KVM VM gets the NIC hot-plugged once its rows are committed
    let hot_host = match (state.as_str(), hv.as_deref(), &host) {
        ("Running", Some("KVM"), Some(h)) => Some(h.clone()),
        ("Running", Some("KVM"), None) => return Err(kvm_running_refused(&uuid, "attach a L3 network")),
        _ => None,
    };
    // the lowest free device id
    let used: Vec<i64> = tx
        .fetch_all("SELECT device_id FROM vm_nic WHERE vm_instance_uuid = $1", &[Val::from(uuid.as_str())])
        .await?
        .iter()
        .map(|r| r.try_get::<i64, _>(0))
        .collect::<std::result::Result<_, _>>()?;
    let device = (0..).find(|d| !used.contains(d)).unwrap_or(0);
    let nic_uuid = new_uuid();
    let now = now_ms();
    let tries = if req.custom_mac.is_some() { 1 } else { 32 };
    let mut inserted = false;
    for _ in 0..tries {
        let n = tx
            .execute(
                "INSERT INTO vm_nic (uuid, vm_instance_uuid, l3_network_uuid, mac, hypervisor_type, ip_version, \
                 driver_type, internal_name, device_id, type, state, create_date, last_op_date) \
                 SELECT $1, $2, $3, $4, $5, 4, $6, $7, $8, 'VNIC', 'enable', $9, $9 WHERE NOT EXISTS \
                 (SELECT 1 FROM vm_nic WHERE vm_instance_uuid = $2 AND l3_network_uuid = $3) ON CONFLICT (mac) DO NOTHING",
                &[
                    Val::from(nic_uuid.as_str()),
                    Val::from(uuid.as_str()),
                    Val::from(l3),
                    Val::S(req.custom_mac.clone().map(|m| m.to_lowercase()).unwrap_or_else(|| mac_for(device))),
                    Val::from(hv.clone()),
                    Val::from(req.driver_type.as_deref().unwrap_or("virtio")),
                    Val::S(format!("vnic{internal_id}.{device}")),
                    Val::I(device),
                    Val::I(now),
                ],
            )
            .await?;
        if n == 1 {
            inserted = true;
            break;
        }
    }
    if !inserted {
        // the guard: a NIC on this L3 appeared meanwhile (another management node's attach)
        let raced = tx
            .fetch_optional(
                "SELECT 1 FROM vm_nic WHERE vm_instance_uuid = $1 AND l3_network_uuid = $2",
                &[Val::from(uuid.as_str()), Val::from(l3)],
            )
            .await?;
        if raced.is_some() {
            return Err(Error::operr(format!(
                "unable to attach a L3 network. The L3 network[uuid:[{l3}]] is already attached to the vm[uuid: {uuid}]"
            )));
        }
        if let Some(m) = &req.custom_mac {
            return Err(Error::operr(format!("Duplicate mac address [{m}]")));
        }
        return Err(Error::code(
            Code { code: "VM.1009", description: "Unable to allocate a mac address for vm's nic" },
            format!("cannot find a free mac address for the nic[deviceId:{device}] of vm[uuid:{uuid}]"),
        ));
    }
    let ip_uuid = new_uuid();
    let (ip, netmask, gateway) = allocate_ip(&mut tx, l3, &nic_uuid, &ip_uuid, req.static_ip.as_deref()).await?;
    tx.execute(
        "UPDATE vm_nic SET used_ip_uuid = $1, ip = $2, netmask = $3, gateway = $4 WHERE uuid = $5",
        &[
            Val::from(ip_uuid.as_str()),
            Val::from(ip),
            Val::from(netmask),
            Val::from(gateway),
            Val::from(nic_uuid.as_str()),
        ],
    )
    .await?;
    if default_l3.is_none() {
        tx.execute(
            "UPDATE vm_instance SET default_l3_network_uuid = $1 WHERE uuid = $2 AND default_l3_network_uuid IS NULL",
            &[Val::from(l3), Val::from(uuid.as_str())],
        )
        .await?;
    }
    tx.execute("UPDATE vm_instance SET last_op_date = $1 WHERE uuid = $2", &[Val::I(now), Val::from(uuid.as_str())])
        .await?;
    tx.commit().await?;
    if let Some(h) = hot_host {
        if let Err(e) = hot_plug(&app, &uuid, &h, device).await {
            // give back what this attach took: the NIC, its address, the default L3 it set
            let mut tx = app.db.begin_write().await?;
            tx.execute("DELETE FROM used_ip WHERE vm_nic_uuid = $1", &[Val::from(nic_uuid.as_str())]).await?;
            tx.execute("DELETE FROM vm_nic WHERE uuid = $1", &[Val::from(nic_uuid.as_str())]).await?;
            if default_l3.is_none() {
                tx.execute(
                    "UPDATE vm_instance SET default_l3_network_uuid = NULL WHERE uuid = $1 AND default_l3_network_uuid = $2",
                    &[Val::from(uuid.as_str()), Val::from(l3)],
                )
                .await?;
            }
            tx.commit().await?;
            return Err(e);
        }
    }
    reply(&app, &uuid).await
}

/// The agent of a KVM host and the VM's NIC `device` as its start plan sees it.
async fn kvm_nic(app: &App, vm: &str, host: &str, device: i64) -> Result<(KvmAgentClient, super::kvm::NicPlan)> {
    let mut tx = app.db.begin_write().await?;
    let plan = super::kvm::start_plan(&mut tx, vm, host).await?;
    tx.commit().await?;
    let Some(plan) = plan else {
        return Err(Error::operr(format!("host[uuid:{host}] of vm[uuid:{vm}] is not a KVM host")));
    };
    let agent = KvmAgentClient::new(&plan.ip, &plan.token);
    let nic = plan
        .nics
        .into_iter()
        .find(|n| n.device == device)
        .ok_or_else(|| Error::not_found(format!("the nic[deviceId:{device}] of vm[uuid:{vm}] is not found")))?;
    Ok((agent, nic))
}

/// The bridge, tap and DHCP lease of one NIC, as the start plan prepares them (idempotent; the
/// lease replaces the one of the same MAC).
fn nic_network(vm: &str, n: &super::kvm::NicPlan) -> crate::hostagent::NetworkPrepareCmd {
    use rzstack_api::agent::{BridgeSpec, DhcpLease, DhcpSpec, TapSpec};
    let b =
        BridgeSpec { l2_uuid: n.l2.clone(), physical_interface: n.interface.clone(), vlan: n.vlan, bridge_name: None };
    let bridge = b.name();
    let mut net = crate::hostagent::NetworkPrepareCmd {
        version: crate::hostagent::PROTOCOL_VERSION,
        bridges: vec![b],
        taps: vec![TapSpec {
            vm_uuid: vm.to_string(),
            tap_name: n.tap.clone(),
            mac: n.mac.clone(),
            bridge_name: bridge.clone(),
        }],
        ..Default::default()
    };
    if let (Some(gw), Some(mask), Some(ip)) = (&n.gateway, &n.netmask, &n.ip) {
        net.dhcp.push(DhcpSpec {
            l3_uuid: n.l3.clone(),
            bridge_name: bridge,
            gateway: gw.clone(),
            netmask: mask.clone(),
            dns: vec![],
            dns_domain: None,
            leases: vec![DhcpLease { mac: n.mac.clone(), ip: ip.clone(), hostname: n.hostname.clone() }],
        });
    }
    net
}

/// Hot-plug NIC `device` into the running KVM VM: its bridge, tap and DHCP lease first (as at
/// start), then the virtio-net device over QMP. A failure releases the tap again.
async fn hot_plug(app: &App, vm: &str, host: &str, device: i64) -> Result<()> {
    use crate::hostagent::HostAgent;
    use rzstack_api::agent::{VmNicCmd, VmNicSpec};
    let (agent, n) = kvm_nic(app, vm, host, device).await?;
    let net = nic_network(vm, &n);
    let failed = |what: &str, e: crate::hostagent::AgentError| {
        Error::operr(format!("failed to {what} of vm[uuid:{vm}] on its KVM host[uuid:{host}]: {e}"))
    };
    agent.prepare_network(&net).await.map_err(|e| failed("prepare the network of the new nic", e))?;
    let cmd = VmNicCmd {
        version: crate::hostagent::PROTOCOL_VERSION,
        vm_uuid: vm.to_string(),
        nic: VmNicSpec { mac: n.mac.clone(), tap_name: n.tap.clone(), device_id: device },
    };
    if let Err(e) = agent.attach_nic(&cmd).await {
        release_nic_on_host(app, vm, host, &n.l3, &n.mac, device).await;
        return Err(failed("hot-plug the new nic", e));
    }
    Ok(())
}

pub(super) async fn detach_l3(app: App, msg: Msg) -> Result<Reply> {
    let nic = msg.str("vmNicUuid").unwrap_or_default().to_string();
    let owner: Option<String> = {
        let mut tx = app.db.begin_write().await?;
        let r = tx
            .fetch_optional("SELECT vm_instance_uuid FROM vm_nic WHERE uuid = $1", &[Val::from(nic.as_str())])
            .await?;
        tx.commit().await?;
        match r {
            Some(r) => r.try_get::<Option<String>, _>(0)?,
            None => return Err(Error::not_found(format!("vm nic[uuid:{nic}] is not found"))),
        }
    };
    let Some(uuid) = owner else {
        return Err(Error::operr(format!("the nic[uuid:{nic}] is not attached to any vm")));
    };
    let _turn = queue::turn(&uuid).await;
    let mut tx = app.db.begin_write().await?;
    let row = tx
        .fetch_optional(
            "SELECT v.state, v.hypervisor_type, v.default_l3_network_uuid, n.l3_network_uuid, n.mac, n.device_id, \
             v.last_host_uuid, v.platform FROM vm_nic n \
             JOIN vm_instance v ON v.uuid = n.vm_instance_uuid WHERE n.uuid = $1 AND v.uuid = $2",
            &[Val::from(nic.as_str()), Val::from(uuid.as_str())],
        )
        .await?
        .ok_or_else(|| Error::not_found(format!("vm nic[uuid:{nic}] is not found")))?;
    let state: String = row.try_get(0)?;
    let hv: Option<String> = row.try_get(1)?;
    let default_l3: Option<String> = row.try_get(2)?;
    let l3: String = row.try_get(3)?;
    let mac: String = row.try_get(4)?;
    let device: i64 = row.try_get(5)?;
    let last_host: Option<String> = row.try_get(6)?;
    let platform: Option<String> = row.try_get(7)?;
    if state != "Running" && state != "Stopped" {
        return Err(Error::operr(format!(
            "unable to detach a L3 network. The vm[uuid: {uuid}] is not Running or Stopped; the current state is {state}"
        )));
    }
    // upstream (KVM): only paravirtualized platforms (virtio NICs) may lose a NIC
    if let (Some("KVM"), Some(p)) = (hv.as_deref(), platform.as_deref()) {
        if !matches!(p, "Linux" | "WindowsVirtio" | "Paravirtualization") {
            return Err(Error::operr(format!(
                "unable to detach a L3 network on kvm host because platform of vm[uuid: {uuid}] is {p}"
            )));
        }
    }
    let hot_host: Option<String> = if state == "Running" && hv.as_deref() == Some("KVM") {
        let h: Option<String> = tx
            .fetch_optional("SELECT host_uuid FROM vm_instance WHERE uuid = $1", &[Val::from(uuid.as_str())])
            .await?
            .map(|r| r.try_get::<Option<String>, _>(0))
            .transpose()?
            .flatten();
        let Some(h) = h else { return Err(kvm_running_refused(&uuid, "detach a L3 network")) };
        // the guest lets the device go first; nothing in the database changes when it does not
        let cmd = rzstack_api::agent::VmNicCmd {
            version: crate::hostagent::PROTOCOL_VERSION,
            vm_uuid: uuid.clone(),
            nic: rzstack_api::agent::VmNicSpec {
                mac: mac.clone(),
                tap_name: super::kvm::tap_name(&uuid, device),
                device_id: device,
            },
        };
        // no transaction is open while the host works (the VM's turn keeps others out)
        tx.commit().await?;
        let agent = super::kvm::agent_of_vm(&app.db, &uuid)
            .await?
            .ok_or_else(|| kvm_running_refused(&uuid, "detach a L3 network"))?;
        let unplugged = agent.detach_nic(&cmd).await;
        tx = app.db.begin_write().await?;
        unplugged.map_err(|e| {
            Error::operr(format!(
                "failed to hot-unplug the nic[uuid:{nic}] of vm[uuid:{uuid}] on its KVM host[uuid:{h}]: {e}"
            ))
        })?;
        Some(h)
    } else {
        None
    };
    tx.execute("DELETE FROM used_ip WHERE vm_nic_uuid = $1", &[Val::from(nic.as_str())]).await?;
    crate::resources::tag::delete_for_resource(&mut tx, &nic).await?;
    tx.execute("DELETE FROM vm_nic WHERE uuid = $1", &[Val::from(nic.as_str())]).await?;
    if default_l3.as_deref() == Some(l3.as_str()) {
        // the default L3 goes to another NIC's L3, or none
        let next: Option<String> = tx
            .fetch_optional(
                "SELECT l3_network_uuid FROM vm_nic WHERE vm_instance_uuid = $1 ORDER BY device_id LIMIT 1",
                &[Val::from(uuid.as_str())],
            )
            .await?
            .map(|r| r.try_get::<String, _>(0))
            .transpose()?;
        tx.execute(
            "UPDATE vm_instance SET default_l3_network_uuid = $1 WHERE uuid = $2",
            &[Val::from(next), Val::from(uuid.as_str())],
        )
        .await?;
    }
    tx.execute(
        "UPDATE vm_instance SET last_op_date = $1 WHERE uuid = $2",
        &[Val::I(now_ms()), Val::from(uuid.as_str())],
    )
    .await?;
    tx.commit().await?;
    if let (Some("KVM"), Some(host)) = (hv.as_deref(), hot_host.as_deref().or(last_host.as_deref())) {
        release_nic_on_host(&app, &uuid, host, &l3, &mac, device).await;
    }
    reply(&app, &uuid).await
}

/// A stopped KVM VM keeps its taps and DHCP leases on its last host for the next start: a
/// detached NIC's tap and lease go now (best effort: a host that cannot be reached keeps a
/// stale tap, which a later NIC with the same device id reuses).
async fn release_nic_on_host(app: &App, vm: &str, host: &str, l3: &str, mac: &str, device: i64) {
    let cmd = crate::hostagent::NetworkReleaseCmd {
        version: crate::hostagent::PROTOCOL_VERSION,
        taps: vec![super::kvm::tap_name(vm, device)],
        leases: vec![rzstack_api::agent::DhcpRelease { l3_uuid: l3.to_string(), macs: vec![mac.to_string()] }],
        ..Default::default()
    };
    match crate::hostagent::agent_for_host(&app.db, host).await {
        Ok(agent) => {
            if let Err(e) = agent.release_network(&cmd).await {
                tracing::warn!("releasing the tap of a detached nic of vm {vm} on host {host}: {e}");
            }
        }
        Err(e) => tracing::warn!("releasing the tap of a detached nic of vm {vm} on host {host}: {e}"),
    }
}

/// Enabled, non-system L3 networks on an L2 attached to the VM's cluster (the zone's when the
/// VM has no cluster), with an IP range, not attached to the VM yet.
pub(super) async fn attachable_l3(app: App, msg: Msg) -> Result<Reply> {
    let uuid = vm_uuid(&msg);
    let mut tx = app.db.begin_write().await?;
    let vm = tx
        .fetch_optional("SELECT cluster_uuid, zone_uuid FROM vm_instance WHERE uuid = $1", &[Val::from(uuid.as_str())])
        .await?
        .ok_or_else(|| vm_not_found(&uuid))?;
    let cluster: Option<String> = vm.try_get(0)?;
    let zone: Option<String> = vm.try_get(1)?;
    let common = "l.state = 'Enabled' AND l.category <> 'System' \
         AND EXISTS (SELECT 1 FROM ip_range r WHERE r.l3_network_uuid = l.uuid AND r.ip_range_type = 'Normal') \
         AND l.uuid NOT IN (SELECT n.l3_network_uuid FROM vm_nic n WHERE n.vm_instance_uuid = $2)";
    let rows = match &cluster {
        Some(c) => {
            tx.fetch_all(
                &format!(
                    "SELECT l.uuid FROM l3_network l WHERE l.l2_network_uuid IN \
                     (SELECT l2_network_uuid FROM l2_network_cluster_ref WHERE cluster_uuid = $1) AND {common} \
                     ORDER BY l.create_date, l.uuid"
                ),
                &[Val::from(c.as_str()), Val::from(uuid.as_str())],
            )
            .await?
        }
        None => {
            tx.fetch_all(
                &format!("SELECT l.uuid FROM l3_network l WHERE l.zone_uuid = $1 AND {common} ORDER BY l.create_date, l.uuid"),
                &[Val::from(zone), Val::from(uuid.as_str())],
            )
            .await?
        }
    };
    let uuids: Vec<String> = rows.iter().map(|r| r.try_get::<String, _>(0)).collect::<std::result::Result<_, _>>()?;
    tx.commit().await?;
    let def = &crate::resources::l3::L3_NETWORK;
    let mut invs = Vec::new();
    for u in &uuids {
        if let Some(inv) = query::get(&app.db, def, u).await? {
            invs.push(inv);
        }
    }
    let mut schema = serde_json::Map::new();
    for (i, inv) in invs.iter().enumerate() {
        query::schema_for(def, &format!("inventories[{i}]"), inv, &mut schema);
    }
    let mut body = serde_json::Map::new();
    body.insert("inventories".into(), Value::Array(invs.into_iter().map(Value::Object).collect()));
    Ok(Reply { body, schema })
}

// ---------------------------------------------------------------------------------------
// SetVmStaticIp

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SetStaticIp {
    l3_network_uuid: String,
    ip: Option<String>,
    ip6: Option<String>,
}

const SET_STATIC_IP_STATES: &[&str] = &["Running", "Stopped"];

/// VM.1010 wrapped in SYS.1006, as upstream's handler reports a state that does not allow it.
fn state_refused(class: &str, allowed: &[&str], state: &str) -> Error {
    let cause = ErrorCode::new(
        rzstack_api::codes::VM_1010,
        format!(
            "current vm instance state[{state}] doesn't allow to proceed message[{class}], allowed states are [{}]",
            java_hash_set_order(allowed).join(", ")
        ),
    );
    let details = cause.details.clone().unwrap_or_default();
    Error::Api(ErrorCode::new(rzstack_api::codes::SYS_1006, details).with_cause(cause))
}

/// Give the VM's NIC on the L3 the required address (IPAM L3s, IPv4): the new address is
/// taken first (UNIQUE-guarded), then the old one freed, the NIC updated and the VM's
/// `staticIp::` tag for that L3 replaced, all in one transaction.
pub(super) async fn set_static_ip(app: App, msg: Msg) -> Result<Reply> {
    let uuid = vm_uuid(&msg);
    let _turn = queue::turn(&uuid).await;
    let req: SetStaticIp = msg.parse()?;
    let l3 = req.l3_network_uuid.as_str();
    let mut tx = app.db.begin_write().await?;
    let ipam: i64 = tx
        .fetch_optional("SELECT enable_ipam FROM l3_network WHERE uuid = $1", &[Val::from(l3)])
        .await?
        .ok_or_else(|| Error::not_found(format!("l3 network[uuid:{l3}] is not found")))?
        .try_get(0)?;
    if req.ip.is_none() && req.ip6.is_none() && ipam != 0 {
        return Err(Error::argerr("could not set ip address, due to no ip address is specified"));
    }
    if req.ip6.is_some() || ipam == 0 {
        return Err(Error::argerr(
            "setting an IPv6 address or an address on an L3 network without IPAM is not supported by this management node",
        ));
    }
    let Some(ip) = req.ip.clone() else {
        return Err(Error::argerr("could not set ip address, due to no ip address is specified"));
    };
    let nics = tx
        .fetch_all(
            "SELECT n.uuid, u.ip, r.network_cidr, r.start_ip_long, r.end_ip_long FROM vm_nic n \
             LEFT JOIN used_ip u ON u.vm_nic_uuid = n.uuid AND u.l3_network_uuid = $2 AND u.ip_version = 4 \
             LEFT JOIN ip_range r ON r.uuid = u.ip_range_uuid WHERE n.vm_instance_uuid = $1 ORDER BY n.device_id",
            &[Val::from(uuid.as_str()), Val::from(l3)],
        )
        .await?;
    let n = crate::resources::l3::ipv4(&ip).map(i64::from);
    let mut target: Option<(String, String)> = None;
    for r in &nics {
        let nic: String = r.try_get(0)?;
        let Some(n) = n else {
            return Err(Error::argerr(format!("static ip [{ip}] format error")));
        };
        let old: Option<String> = r.try_get(1)?;
        let Some(old) = old else { continue };
        if old == ip {
            return Err(Error::argerr(format!("ip address [{ip}] already set to vmNic [uuid:{nic}]")));
        }
        let cidr: Option<String> = r.try_get(2)?;
        if let Some(cidr) = &cidr {
            if !in_cidr(n, cidr) {
                return Err(Error::argerr(format!("ip address [{ip}] is not in ip range [{cidr}]")));
            }
        }
        target.get_or_insert((nic, old));
    }
    if nics.is_empty() {
        return Err(Error::argerr(format!("the VM[uuid:{uuid}] has no nic on the L3 network[uuid:{l3}]")));
    }
    let state = vm_state(&mut tx, &uuid).await?.ok_or_else(|| vm_not_found(&uuid))?;
    if !SET_STATIC_IP_STATES.contains(&state.as_str()) {
        return Err(state_refused("org.zstack.header.vm.APISetVmStaticIpMsg", SET_STATIC_IP_STATES, &state));
    }
    let Some((nic, _old)) = target else {
        return Err(Error::operr(format!("the vm[uuid:{uuid}] has no nic on the L3 network[uuid:{l3}]")));
    };
    let hv: Option<String> = tx
        .fetch_optional("SELECT hypervisor_type FROM vm_instance WHERE uuid = $1", &[Val::from(uuid.as_str())])
        .await?
        .map(|r| r.try_get::<Option<String>, _>(0))
        .transpose()?
        .flatten();
    // a Running KVM VM: its host's DHCP server gets the new lease before the old address goes
    let hot_host: Option<(String, i64)> = if state == "Running" && hv.as_deref() == Some("KVM") {
        let r = tx
            .fetch_optional(
                "SELECT v.host_uuid, n.device_id FROM vm_instance v JOIN vm_nic n ON n.vm_instance_uuid = v.uuid \
                 WHERE v.uuid = $1 AND n.uuid = $2",
                &[Val::from(uuid.as_str()), Val::from(nic.as_str())],
            )
            .await?
            .ok_or_else(|| vm_not_found(&uuid))?;
        let h: Option<String> = r.try_get(0)?;
        let Some(h) = h else { return Err(kvm_running_refused(&uuid, "change the ip address")) };
        Some((h, r.try_get(1)?))
    } else {
        None
    };
    let old_ip_uuid: Option<String> = tx
        .fetch_optional("SELECT used_ip_uuid FROM vm_nic WHERE uuid = $1", &[Val::from(nic.as_str())])
        .await?
        .map(|r| r.try_get::<Option<String>, _>(0))
        .transpose()?
        .flatten();
    let ip_uuid = new_uuid();
    let (ip, netmask, gateway) = allocate_ip(&mut tx, l3, &nic, &ip_uuid, Some(&ip)).await?;
    if let Some((host, device)) = &hot_host {
        // the new address is held (committed) while the host works; given back if it fails
        tx.commit().await?;
        if let Err(e) = refresh_lease(&app, &uuid, host, *device, l3, &ip).await {
            let mut tx = app.db.begin_write().await?;
            tx.execute("DELETE FROM used_ip WHERE uuid = $1", &[Val::from(ip_uuid.as_str())]).await?;
            tx.commit().await?;
            return Err(e);
        }
        tx = app.db.begin_write().await?;
    }
    tx.execute(
        "DELETE FROM used_ip WHERE vm_nic_uuid = $1 AND l3_network_uuid = $2 AND ip_version = 4 AND uuid <> $3",
        &[Val::from(nic.as_str()), Val::from(l3), Val::from(ip_uuid.as_str())],
    )
    .await?;
    let primary = old_ip_uuid.is_none()
        || tx
            .fetch_optional(
                "SELECT 1 FROM vm_nic WHERE uuid = $1 AND l3_network_uuid = $2",
                &[Val::from(nic.as_str()), Val::from(l3)],
            )
            .await?
            .is_some();
    if primary {
        tx.execute(
            "UPDATE vm_nic SET used_ip_uuid = $1, ip = $2, netmask = $3, gateway = $4, last_op_date = $5 WHERE uuid = $6",
            &[
                Val::from(ip_uuid.as_str()),
                Val::from(ip.as_str()),
                Val::from(netmask),
                Val::from(gateway),
                Val::I(now_ms()),
                Val::from(nic.as_str()),
            ],
        )
        .await?;
    }
    tx.execute(
        "DELETE FROM system_tag WHERE resource_uuid = $1 AND resource_type = 'VmInstanceVO' AND tag LIKE $2",
        &[Val::from(uuid.as_str()), Val::S(format!("staticIp::{l3}::%"))],
    )
    .await?;
    crate::resources::tag::attach_create_tags(&mut tx, &uuid, "VmInstanceVO", &[format!("staticIp::{l3}::{ip}")], &[])
        .await?;
    tx.commit().await?;
    Ok(Reply::empty())
}

/// Give the NIC's DHCP lease on its KVM host the new address `ip` (the guest takes it when it
/// renews its lease).
async fn refresh_lease(app: &App, vm: &str, host: &str, device: i64, l3: &str, ip: &str) -> Result<()> {
    use crate::hostagent::HostAgent;
    let (agent, mut n) = kvm_nic(app, vm, host, device).await?;
    if n.l3 != l3 {
        return Ok(());
    }
    n.ip = Some(ip.to_string());
    if n.hostname.is_some() {
        // the default NIC's lease host name follows the address when no hostname:: tag names it
        let tagged = app
            .db
            .fetch_optional(
                "SELECT 1 FROM system_tag WHERE resource_uuid = $1 AND tag LIKE 'hostname::%'",
                &[Val::from(vm)],
            )
            .await?
            .is_some();
        if !tagged {
            n.hostname = Some(ip.replace('.', "-"));
        }
    }
    agent.prepare_network(&nic_network(vm, &n)).await.map_err(|e| {
        Error::operr(format!(
            "failed to give the new ip address[{ip}] to the DHCP server of vm[uuid:{vm}] on its KVM host[uuid:{host}]: {e}"
        ))
    })?;
    Ok(())
}

fn in_cidr(n: i64, cidr: &str) -> bool {
    let Some((net, len)) = cidr.split_once('/') else { return true };
    let (Some(net), Ok(len)) = (crate::resources::l3::ipv4(net), len.parse::<u32>()) else { return true };
    if len == 0 || len > 32 {
        return true;
    }
    let mask: u32 = u32::MAX << (32 - len);
    (n as u32) & mask == net & mask
}

// ---------------------------------------------------------------------------------------
// AttachIsoToVmInstance / DetachIsoFromVmInstance

const ISO_STATES: &[&str] = &["Running", "Stopped", "Paused"];

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AttachIso {
    iso_uuid: String,
}

/// Upstream: the ISO goes into the VM's first empty CD-ROM. A Stopped VM (and a simulator VM)
/// only records it (a KVM VM boots with it at its next start); on a Running or Paused KVM VM the
/// record is committed, then the ISO is cached on the VM's host and inserted into its CD-ROM
/// drive over QMP; a failure there takes the record back.
pub(super) async fn attach_iso(app: App, msg: Msg) -> Result<Reply> {
    let uuid = vm_uuid(&msg);
    let _turn = queue::turn(&uuid).await;
    let req: AttachIso = msg.parse()?;
    let iso = req.iso_uuid.as_str();
    let mut tx = app.db.begin_write().await?;
    let has = tx
        .fetch_optional(
            "SELECT 1 FROM vm_cdrom WHERE vm_instance_uuid = $1 AND iso_uuid = $2",
            &[Val::from(uuid.as_str()), Val::from(iso)],
        )
        .await?;
    if has.is_some() {
        return Err(Error::operr(format!("VM[uuid:{uuid}] already has an ISO[uuid:{iso}] attached")));
    }
    let media: String = tx
        .fetch_optional("SELECT media_type FROM image WHERE uuid = $1", &[Val::from(iso)])
        .await?
        .ok_or_else(|| Error::not_found(format!("image[uuid:{iso}] is not found")))?
        .try_get(0)?;
    if media != "ISO" {
        return Err(Error::argerr(format!("Unsupported Image Media Type: [{media}] ")));
    }
    let vm = tx
        .fetch_optional(
            "SELECT v.state, v.hypervisor_type, v.name, v.zone_uuid, vol.primary_storage_uuid FROM vm_instance v \
             LEFT JOIN volume vol ON vol.uuid = v.root_volume_uuid WHERE v.uuid = $1",
            &[Val::from(uuid.as_str())],
        )
        .await?
        .ok_or_else(|| vm_not_found(&uuid))?;
    let state: String = vm.try_get(0)?;
    let hv: Option<String> = vm.try_get(1)?;
    let name: String = vm.try_get(2)?;
    let zone: Option<String> = vm.try_get(3)?;
    let ps: Option<String> = vm.try_get(4)?;
    if !ISO_STATES.contains(&state.as_str()) {
        return Err(state_refused("org.zstack.header.vm.AttachIsoToVmInstanceMsg", ISO_STATES, &state));
    }
    // the ISO must be Ready on a backup storage of the VM's zone
    let reachable = tx
        .fetch_optional(
            "SELECT 1 FROM image_backup_storage_ref r JOIN backup_storage_zone_ref z \
             ON z.backup_storage_uuid = r.backup_storage_uuid WHERE r.image_uuid = $1 AND z.zone_uuid = $2 \
             AND r.status = 'Ready'",
            &[Val::from(iso), Val::from(zone)],
        )
        .await?;
    if reachable.is_none() {
        return Err(Error::operr(format!(
            "the ISO[uuid:{iso}] is on backup storage that is not compatible of the primary storage[uuid:{}] where the VM[name:{name}, uuid:{uuid}] is on",
            ps.unwrap_or_default()
        )));
    }
    let empty: Option<String> = tx
        .fetch_optional(
            "SELECT uuid FROM vm_cdrom WHERE vm_instance_uuid = $1 AND iso_uuid IS NULL ORDER BY device_id LIMIT 1",
            &[Val::from(uuid.as_str())],
        )
        .await?
        .map(|r| r.try_get::<String, _>(0))
        .transpose()?;
    let Some(cdrom) = empty else {
        return Err(Error::operr(format!("All vm[uuid:{uuid}] CD-ROMs have mounted ISO")));
    };
    let live_kvm = state != "Stopped" && hv.as_deref() == Some("KVM");
    // compare-and-set: the CD-ROM must still be empty
    let n = tx
        .execute(
            "UPDATE vm_cdrom SET iso_uuid = $1, iso_install_path = NULL, last_op_date = $2 WHERE uuid = $3 AND iso_uuid IS NULL",
            &[Val::from(iso), Val::I(now_ms()), Val::from(cdrom.as_str())],
        )
        .await?;
    if n != 1 {
        return Err(Error::operr(format!("All vm[uuid:{uuid}] CD-ROMs have mounted ISO")));
    }
    tx.commit().await?;
    if live_kvm {
        if let Err(e) = insert_iso(&app, &uuid, Some(iso)).await {
            let mut tx = app.db.begin_write().await?;
            tx.execute(
                "UPDATE vm_cdrom SET iso_uuid = NULL, iso_install_path = NULL, last_op_date = $1 \
                 WHERE uuid = $2 AND iso_uuid = $3",
                &[Val::I(now_ms()), Val::from(cdrom.as_str()), Val::from(iso)],
            )
            .await?;
            tx.commit().await?;
            return Err(e);
        }
    }
    reply(&app, &uuid).await
}

/// Put `iso` (an image uuid) into the CD-ROM drive of the running KVM VM `vm`, or eject its
/// medium (`None`): the ISO is cached on the VM's host first (as for a start with it), then
/// the agent changes the medium over QMP.
async fn insert_iso(app: &App, vm: &str, iso: Option<&str>) -> Result<()> {
    use crate::hostagent::HostAgent;
    let Some(agent) = super::kvm::agent_of_vm(&app.db, vm).await? else {
        return Err(kvm_running_refused(vm, "change the ISO"));
    };
    let failed = |what: &str, e: crate::hostagent::AgentError| {
        Error::operr(format!("failed to {what} of vm[uuid:{vm}] on its KVM host: {e}"))
    };
    let path = match iso {
        None => None,
        Some(iso) => {
            let r = app
                .db
                .fetch_optional(
                    "SELECT r.install_path, (SELECT p.url FROM vm_instance v JOIN volume vol ON vol.uuid = v.root_volume_uuid \
                     JOIN primary_storage p ON p.uuid = vol.primary_storage_uuid WHERE v.uuid = $2) \
                     FROM image_backup_storage_ref r WHERE r.image_uuid = $1 AND r.status = 'Ready' \
                     AND r.install_path IS NOT NULL ORDER BY r.create_date LIMIT 1",
                    &[Val::from(iso), Val::from(vm)],
                )
                .await?
                .ok_or_else(|| Error::operr(format!("the ISO[uuid:{iso}] is on no backup storage")))?;
            let source: String = r.try_get(0)?;
            let root: Option<String> = r.try_get(1)?;
            let cached = agent
                .cache_image(&rzstack_api::agent::ImageCacheCmd {
                    version: crate::hostagent::PROTOCOL_VERSION,
                    image_uuid: iso.to_string(),
                    source_path: source,
                    format: Some("iso".into()),
                    cache_root: root.filter(|u| u.starts_with('/')),
                })
                .await
                .map_err(|e| failed("cache the ISO for the CD-ROM", e))?;
            Some(cached.install_path)
        }
    };
    let cmd = rzstack_api::agent::VmCdromCmd {
        version: crate::hostagent::PROTOCOL_VERSION,
        vm_uuid: vm.to_string(),
        iso: path,
    };
    agent.change_cdrom(&cmd).await.map_err(|e| failed("change the CD-ROM medium", e))?;
    Ok(())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DetachIso {
    iso_uuid: Option<String>,
}

pub(super) async fn detach_iso(app: App, msg: Msg) -> Result<Reply> {
    let uuid = vm_uuid(&msg);
    let _turn = queue::turn(&uuid).await;
    let req: DetachIso = msg.parse()?;
    let mut tx = app.db.begin_write().await?;
    let isos: Vec<String> = tx
        .fetch_all(
            "SELECT iso_uuid FROM vm_cdrom WHERE vm_instance_uuid = $1 AND iso_uuid IS NOT NULL ORDER BY device_id",
            &[Val::from(uuid.as_str())],
        )
        .await?
        .iter()
        .map(|r| r.try_get::<String, _>(0))
        .collect::<std::result::Result<_, _>>()?;
    if isos.len() > 1 && req.iso_uuid.is_none() {
        return Err(Error::operr(format!(
            "VM[uuid:{uuid}] has multiple ISOs attached, specify the isoUuid when detaching"
        )));
    }
    let iso = req.iso_uuid.clone().or_else(|| if isos.len() == 1 { isos.first().cloned() } else { None });
    let (state, hv): (String, Option<String>) = {
        let r = tx
            .fetch_optional(
                "SELECT state, hypervisor_type FROM vm_instance WHERE uuid = $1",
                &[Val::from(uuid.as_str())],
            )
            .await?
            .ok_or_else(|| vm_not_found(&uuid))?;
        (r.try_get(0)?, r.try_get(1)?)
    };
    if !ISO_STATES.contains(&state.as_str()) {
        return Err(state_refused("org.zstack.header.vm.APIDetachIsoFromVmInstanceMsg", ISO_STATES, &state));
    }
    if let Some(iso) = iso.filter(|i| isos.contains(i)) {
        if state != "Stopped" && hv.as_deref() == Some("KVM") {
            // the medium leaves the drive first: a failure changes nothing
            tx.commit().await?;
            insert_iso(&app, &uuid, None).await?;
            tx = app.db.begin_write().await?;
        }
        tx.execute(
            "UPDATE vm_cdrom SET iso_uuid = NULL, iso_install_path = NULL, last_op_date = $1 \
             WHERE vm_instance_uuid = $2 AND iso_uuid = $3",
            &[Val::I(now_ms()), Val::from(uuid.as_str()), Val::from(iso.as_str())],
        )
        .await?;
    }
    tx.commit().await?;
    reply(&app, &uuid).await
}

// ---------------------------------------------------------------------------------------
// GetVmConsoleAddress

const CONSOLE_STATES: &[&str] = &["Running", "Crashed"];

/// Upstream asks the VM's host for its VNC/SPICE port. A KVM host's agent answers the port its
/// QEMU's VNC display listens on (every address of the host): the reply is the host's management
/// IP, that port, protocol `vnc` and `vdiPortInfo.vncPort`. A simulator host runs no guest
/// (upstream's simulator does not answer the request either): refused clearly after upstream's
/// checks, never a made-up address.
pub(super) async fn console_address(app: App, msg: Msg) -> Result<Reply> {
    let uuid = msg.str("uuid").unwrap_or_default().to_string();
    let mut tx = app.db.begin_write().await?;
    let r = tx
        .fetch_optional(
            "SELECT v.state, v.hypervisor_type, h.management_ip FROM vm_instance v \
             LEFT JOIN host h ON h.uuid = v.host_uuid WHERE v.uuid = $1",
            &[Val::from(uuid.as_str())],
        )
        .await?
        .ok_or_else(|| vm_not_found(&uuid))?;
    tx.commit().await?;
    let state: String = r.try_get(0)?;
    let hv: Option<String> = r.try_get(1)?;
    let ip: Option<String> = r.try_get(2)?;
    if !CONSOLE_STATES.contains(&state.as_str()) {
        return Err(state_refused("org.zstack.header.vm.APIGetVmConsoleAddressMsg", CONSOLE_STATES, &state));
    }
    if ip.is_none() {
        return Err(Error::operr(format!("the vm[uuid:{uuid}] is not on any host")));
    }
    if hv.as_deref() == Some("KVM") {
        let Some(agent) = super::kvm::agent_of_vm(&app.db, &uuid).await? else {
            return Err(Error::operr(format!("the vm[uuid:{uuid}] is not on any host")));
        };
        let cmd =
            rzstack_api::agent::VmConsoleCmd { version: crate::hostagent::PROTOCOL_VERSION, vm_uuid: uuid.clone() };
        let c = agent.vm_console(&cmd).await.map_err(|e| {
            Error::code(
                rzstack_api::codes::VM_1017,
                format!("unable to get the console address of vm[uuid:{uuid}] from its KVM host: {e}"),
            )
        })?;
        return Ok(Reply::fields([
            ("hostIp", Value::from(ip.unwrap_or_default())),
            ("port", Value::from(c.port)),
            ("protocol", Value::from(c.protocol)),
            ("vdiPortInfo", serde_json::json!({ "vncPort": c.port })),
        ]));
    }
    Err(Error::operr(format!(
        "operation error, because:the vm[uuid:{uuid}] has no console: a simulator host runs no guest"
    )))
}
