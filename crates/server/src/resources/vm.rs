//! VM instances (upstream `VmInstanceVO`, `VmNicVO`, `VmCdRomVO`): CreateVmInstance as a saga,
//! QueryVmInstance, QueryVmNic.
//!
//! Creation (facts 4.3): the upstream interceptor checks run first, in upstream order; then
//! the saga [`CREATE_VM`]: VM record → host (atomic CPU/memory reservation) → primary storage
//! (atomic capacity reservation, held on the VM row until the volumes take it) → root and
//! data volume rows → CD-ROM → instantiate on the host → final state. `JustCreate` runs only
//! the first step ([`JUST_CREATE`]). Every step's undo gives back exactly what the step took,
//! guarded by a compare-and-set on the row that records it, so running it twice is harmless.

use crate::api::{boxed, ApiDef, Body, Kind, Method, Msg, Reply, HOURS};
use crate::db::{Val, WriteTx};
use crate::error::{Error, Result};
use crate::params::Param;
use crate::query::{self, field, Child, FType, ResourceDef};
use crate::saga::{self, SagaDef, Step};
use crate::util::{new_uuid, now_ms};
use crate::App;
use futures::future::BoxFuture;
use rzstack_api::{Code, ErrorCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::Row;

use super::cluster::CLUSTER;
use super::host::HOST;
use super::image::IMAGE;
use super::offering::{DISK_OFFERING, INSTANCE_OFFERING};
use super::primary_storage::PRIMARY_STORAGE;
use super::volume::VOLUME;
use super::zone::ZONE;

#[path = "vm_kvm.rs"]
mod kvm;

pub const HOST_ALLOCATION_1000: Code = Code { code: "HOST_ALLOCATION.1000", description: "No available host found" };
pub const PS_1000: Code = Code {
    code: "PS.1000",
    description: "Unable to allocate a primary storage that has available space for required volume",
};
pub const HOST_1005: Code = Code { code: "HOST.1005", description: "Failed to start vm on hypervisor" };

pub static USED_IP: ResourceDef = ResourceDef {
    inventory: "UsedIpInventory",
    vo: "UsedIpVO",
    class: "org.zstack.header.network.l3.UsedIpInventory",
    table: "used_ip",
    fields: &[
        field("uuid", "uuid", FType::Str),
        field("ipRangeUuid", "ip_range_uuid", FType::Str),
        field("l3NetworkUuid", "l3_network_uuid", FType::Str),
        field("ipVersion", "ip_version", FType::Int),
        field("ip", "ip", FType::Str),
        field("netmask", "netmask", FType::Str),
        field("gateway", "gateway", FType::Str),
        field("usedFor", "used_for", FType::Str),
        field("metaData", "meta_data", FType::Str),
        field("ipInLong", "ip_in_long", FType::Int),
        field("vmNicUuid", "vm_nic_uuid", FType::Str),
        field("createDate", "create_date", FType::Date),
        field("lastOpDate", "last_op_date", FType::Date),
    ],
    children: &[],
    class_of: None,
    order: "t.ip_in_long, t.uuid",
    tag_type: None,
};

pub static VM_NIC: ResourceDef = ResourceDef {
    inventory: "VmNicInventory",
    vo: "VmNicVO",
    class: "org.zstack.header.vm.VmNicInventory",
    table: "vm_nic",
    fields: &[
        field("uuid", "uuid", FType::Str),
        field("vmInstanceUuid", "vm_instance_uuid", FType::Str),
        field("usedIpUuid", "used_ip_uuid", FType::Str),
        field("l3NetworkUuid", "l3_network_uuid", FType::Str),
        field("ip", "ip", FType::Str),
        field("mac", "mac", FType::Str),
        field("hypervisorType", "hypervisor_type", FType::Str),
        field("netmask", "netmask", FType::Str),
        field("gateway", "gateway", FType::Str),
        field("metaData", "meta_data", FType::Str),
        field("ipVersion", "ip_version", FType::Int),
        field("driverType", "driver_type", FType::Str),
        field("internalName", "internal_name", FType::Str),
        field("deviceId", "device_id", FType::Int),
        field("type", "type", FType::Str),
        field("state", "state", FType::Str),
        field("createDate", "create_date", FType::Date),
        field("lastOpDate", "last_op_date", FType::Date),
    ],
    children: &[Child { name: "usedIps", def: &USED_IP, fk: "vm_nic_uuid", pk: "uuid", many: true }],
    class_of: None,
    order: "t.device_id, t.uuid",
    tag_type: Some("VmNicVO"),
};

pub static VM_CDROM: ResourceDef = ResourceDef {
    inventory: "VmCdRomInventory",
    vo: "VmCdRomVO",
    class: "org.zstack.header.vm.cdrom.VmCdRomInventory",
    table: "vm_cdrom",
    fields: &[
        field("uuid", "uuid", FType::Str),
        field("vmInstanceUuid", "vm_instance_uuid", FType::Str),
        field("deviceId", "device_id", FType::Int),
        field("isoUuid", "iso_uuid", FType::Str),
        field("isoInstallPath", "iso_install_path", FType::Str),
        field("name", "name", FType::Str),
        field("description", "description", FType::Str),
        field("createDate", "create_date", FType::Date),
        field("lastOpDate", "last_op_date", FType::Date),
    ],
    children: &[],
    class_of: None,
    order: "t.device_id, t.uuid",
    tag_type: Some("VmCdRomVO"),
};

pub static VM: ResourceDef = ResourceDef {
    inventory: "VmInstanceInventory",
    vo: "VmInstanceVO",
    class: "org.zstack.header.vm.VmInstanceInventory",
    table: "vm_instance",
    fields: &[
        field("uuid", "uuid", FType::Str),
        field("name", "name", FType::Str),
        field("description", "description", FType::Str),
        field("zoneUuid", "zone_uuid", FType::Str),
        field("clusterUuid", "cluster_uuid", FType::Str),
        field("imageUuid", "image_uuid", FType::Str),
        field("hostUuid", "host_uuid", FType::Str),
        field("lastHostUuid", "last_host_uuid", FType::Str),
        field("instanceOfferingUuid", "instance_offering_uuid", FType::Str),
        field("rootVolumeUuid", "root_volume_uuid", FType::Str),
        field("platform", "platform", FType::Str),
        field("architecture", "architecture", FType::Str),
        field("defaultL3NetworkUuid", "default_l3_network_uuid", FType::Str),
        field("type", "type", FType::Str),
        field("hypervisorType", "hypervisor_type", FType::Str),
        field("memorySize", "memory_size", FType::Int),
        field("reservedMemorySize", "reserved_memory_size", FType::Int),
        field("cpuNum", "cpu_num", FType::Int),
        field("cpuSpeed", "cpu_speed", FType::Int),
        field("allocatorStrategy", "allocator_strategy", FType::Str),
        field("createDate", "create_date", FType::Date),
        field("lastOpDate", "last_op_date", FType::Date),
        field("state", "state", FType::Str),
        field("internalId", "internal_id", FType::Int),
        field("guestOsType", "guest_os_type", FType::Str),
    ],
    children: &[
        Child { name: "vmNics", def: &VM_NIC, fk: "vm_instance_uuid", pk: "uuid", many: true },
        Child { name: "allVolumes", def: &VOLUME, fk: "vm_instance_uuid", pk: "uuid", many: true },
        Child { name: "vmCdRoms", def: &VM_CDROM, fk: "vm_instance_uuid", pk: "uuid", many: true },
    ],
    class_of: None,
    order: "t.create_date, t.uuid",
    tag_type: Some("VmInstanceVO"),
};

/// A VM's TPM (upstream `TpmVO`/`TpmInventory`, `GET /tpms`). `keyProviderUuid` is ours: the
/// key provider asked for at creation (upstream keeps it in its encrypted-resource-key tables,
/// which this node does not have); upstream's `hostRefs` come with the host agent.
pub static TPM: ResourceDef = ResourceDef {
    inventory: "TpmInventory",
    vo: "TpmVO",
    class: "org.zstack.header.tpm.entity.TpmInventory",
    table: "tpm",
    fields: &[
        field("uuid", "uuid", FType::Str),
        field("name", "name", FType::Str),
        field("vmInstanceUuid", "vm_instance_uuid", FType::Str),
        field("createDate", "create_date", FType::Date),
        field("lastOpDate", "last_op_date", FType::Date),
        field("keyProviderUuid", "key_provider_uuid", FType::Str),
    ],
    children: &[],
    class_of: None,
    order: "t.create_date, t.uuid",
    tag_type: Some("TpmVO"),
};

async fn reply(app: &App, uuid: &str) -> Result<Reply> {
    match query::get(&app.db, &VM, uuid).await? {
        Some(inv) => Ok(Reply::inventory(&VM, inv)),
        None => Err(Error::not_found(format!("vm instance[uuid:{uuid}] is not found"))),
    }
}

// ---------------------------------------------------------------------------------------
// The request and its checks

#[derive(Deserialize, Clone, Default)]
#[serde(rename_all = "camelCase")]
struct CreateVm {
    name: String,
    description: Option<String>,
    instance_offering_uuid: Option<String>,
    cpu_num: Option<i64>,
    memory_size: Option<i64>,
    reserved_memory_size: Option<i64>,
    image_uuid: Option<String>,
    #[serde(default)]
    l3_network_uuids: Vec<String>,
    #[serde(rename = "type")]
    ty: Option<String>,
    root_disk_offering_uuid: Option<String>,
    root_disk_size: Option<i64>,
    #[serde(default, deserialize_with = "sizes")]
    data_disk_sizes: Vec<i64>,
    #[serde(default)]
    data_disk_offering_uuids: Vec<String>,
    zone_uuid: Option<String>,
    cluster_uuid: Option<String>,
    host_uuid: Option<String>,
    primary_storage_uuid_for_root_volume: Option<String>,
    default_l3_network_uuid: Option<String>,
    strategy: Option<String>,
    platform: Option<String>,
    guest_os_type: Option<String>,
    architecture: Option<String>,
    #[serde(default)]
    root_volume_system_tags: Vec<String>,
    #[serde(default)]
    data_volume_system_tags: Vec<String>,
    #[serde(default)]
    ssh_key_pair_uuids: Vec<String>,
    vm_nic_params: Option<String>,
    #[serde(default, rename = "diskAOs")]
    disk_aos: Vec<DiskAo>,
    #[serde(default)]
    data_volume_template_uuids: Vec<String>,
    #[serde(default)]
    data_volume_system_tags_on_index: std::collections::BTreeMap<String, Vec<String>>,
    virtio: Option<bool>,
    devices: Option<Devices>,
    /// CreateVmInstanceFromVolumeSnapshot: the snapshot the root volume copies
    #[serde(skip)]
    snapshot: Option<SnapSrc>,
}

/// One entry of `diskAOs` (upstream `APICreateVmInstanceMsg.DiskAO`).
#[derive(Deserialize, Clone, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DiskAo {
    #[serde(default)]
    boot: bool,
    platform: Option<String>,
    guest_os_type: Option<String>,
    architecture: Option<String>,
    primary_storage_uuid: Option<String>,
    #[serde(default)]
    size: i64,
    template_uuid: Option<String>,
    disk_offering_uuid: Option<String>,
    source_type: Option<String>,
    source_uuid: Option<String>,
    #[serde(default)]
    system_tags: Vec<String>,
    name: Option<String>,
}

/// An existing volume a diskAO names (`sourceType: VolumeVO`): detached, not shareable, Ready
/// and Enabled (upstream CreateVmInstanceFromVolume's conditions); returns it and its primary storage.
async fn source_volume(app: &App, ao: &DiskAo) -> Result<(String, String)> {
    let src = ao.source_uuid.clone().unwrap_or_default();
    if let Some(t) = ao.source_type.as_deref().filter(|t| *t != "VolumeVO") {
        return Err(Error::argerr(format!(
            "diskAOs sourceType[{t}] is not supported by this management node yet: only VolumeVO"
        )));
    }
    let row = one_row(
        app,
        "SELECT vm_instance_uuid, is_shareable, status, state, primary_storage_uuid FROM volume WHERE uuid = $1",
        &src,
    )
    .await?
    .ok_or_else(|| {
        Error::not_found(format!("invalid field[diskAOs.sourceUuid], resource[uuid:{src}, type:VolumeVO] not found"))
    })?;
    if row.try_get::<i64, _>(1)? != 0 {
        return Err(Error::operr("cannot create vm instance from a shareable volume."));
    }
    if opt_str(&row, 0)?.is_some() {
        return Err(Error::operr("could not create vm instance from a attached volume."));
    }
    let status: String = row.try_get(2)?;
    let state: String = row.try_get(3)?;
    let ps = opt_str(&row, 4)?;
    match ps {
        Some(ps) if status == "Ready" && state == "Enabled" => Ok((src, ps)),
        _ => Err(Error::operr(format!("volume[uuid:{src}] could not satisfy conditions[state:Enabled status:Ready]"))),
    }
}

/// One entry of `vmNicParams` (upstream `VmNicParam`), the parts this node honours.
#[derive(Clone, Default)]
struct NicParam {
    l3: String,
    ip: Option<String>,
    mac: Option<String>,
    netmask: Option<String>,
    gateway: Option<String>,
    meta_data: Option<String>,
    driver: Option<String>,
    state: Option<String>,
}

/// NIC drivers upstream supports (`VmInstanceManager.xml` supportNicDriverTypes).
const NIC_DRIVERS: &[&str] = &["virtio", "e1000", "rtl8139", "pcnet"];
/// upstream VM_NIC_QOS_MIN / VM_NIC_QOS_MAX
const NIC_QOS_MIN: i64 = 8192;
const NIC_QOS_MAX: i64 = 32_212_254_720;

/// `vmNicParams`: a JSON array of VmNicParam, checked as upstream `VmNicUtils.validateVmParms`
/// (texts and order); fields this node cannot honour yet (IPv6, QoS, multi-queue, security
/// groups, NIC type) are refused by name, and so is a key VmNicParam does not have.
fn parse_nic_params(text: &str, l3s: &[String]) -> Result<Vec<NicParam>> {
    if l3s.is_empty() {
        return Err(Error::argerr("l3NetworkUuids cannot be empty when vmNicParams is provided"));
    }
    let items: Vec<serde_json::Map<String, Value>> =
        serde_json::from_str(text).map_err(|e| Error::operr(format!("invalid json format, causes: {e}")))?;
    let l3_of = |m: &serde_json::Map<String, Value>| m.get("l3NetworkUuid").and_then(Value::as_str).map(str::to_string);
    let mut distinct: Vec<Option<String>> = Vec::new();
    for m in &items {
        let l3 = l3_of(m);
        if !distinct.contains(&l3) {
            distinct.push(l3);
        }
    }
    if distinct.len() != items.len() {
        return Err(Error::argerr("duplicate nic params"));
    }
    let text_of = |m: &serde_json::Map<String, Value>, k: &str| -> Result<Option<String>> {
        match m.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => {
                Err(Error::argerr(format!("invalid json format, causes: vmNicParams.{k} is not a string: {other}")))
            }
        }
    };
    let num_of = |m: &serde_json::Map<String, Value>, k: &str| -> Result<Option<i64>> {
        match m.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => {
                v.as_i64().or_else(|| v.as_str().and_then(|s| s.trim().parse().ok())).map(Some).ok_or_else(|| {
                    Error::argerr(format!("invalid json format, causes: vmNicParams.{k} is not a number: {v}"))
                })
            }
        }
    };
    let java_list = format!("[{}]", l3s.join(", "));
    let mut out = Vec::new();
    for m in &items {
        let l3 = l3_of(m).filter(|s| !s.is_empty());
        let Some(l3) = l3 else {
            return Err(Error::argerr("l3NetworkUuid of vm nic can not be null"));
        };
        if !l3s.contains(&l3) {
            return Err(Error::argerr(format!("l3NetworkUuid of vm nic is not in l3{java_list}")));
        }
        if let Some(b) = num_of(m, "outboundBandwidth")? {
            if !(NIC_QOS_MIN..=NIC_QOS_MAX).contains(&b) {
                return Err(Error::argerr(format!("outbound bandwidth[{b}] of vm nic is out of [8192, 32212254720]")));
            }
        }
        if let Some(b) = num_of(m, "inboundBandwidth")? {
            if !(NIC_QOS_MIN..=NIC_QOS_MAX).contains(&b) {
                return Err(Error::argerr(format!("inbound bandwidth[{b}] of vm nic is out of [8192, 32212254720]")));
            }
        }
        if let Some(q) = num_of(m, "multiQueueNum")? {
            if !(1..=256).contains(&q) {
                return Err(Error::argerr(format!("multi queue num[{q}] of vm nic is out of [1,256]")));
            }
        }
        let state = text_of(m, "state")?;
        if let Some(st) = &state {
            if st != "enable" && st != "disable" {
                return Err(Error::argerr(format!("vm nic of l3[uuid:{l3}] state[{st}] is not enable or disable ")));
            }
        }
        let driver = text_of(m, "driverType")?.filter(|d| !d.is_empty());
        if let Some(d) = &driver {
            if !NIC_DRIVERS.contains(&d.as_str()) {
                return Err(Error::argerr(format!("vm nic driver {d} not support yet")));
            }
        }
        for (k, v) in m {
            if v.is_null() {
                continue;
            }
            match k.as_str() {
                "l3NetworkUuid" | "ip" | "mac" | "netmask" | "gateway" | "metaData" | "driverType" | "state" => {}
                "ip6" | "prefix6" | "gateway6" | "outboundBandwidth" | "inboundBandwidth" | "multiQueueNum"
                | "sgUuids" | "VmNicType" | "isDefaultNic" => {
                    return Err(Error::argerr(format!(
                        "vmNicParams field[{k}] is not supported by this management node yet"
                    )))
                }
                _ => return Err(Error::argerr(format!("vmNicParams field[{k}] is not a field of VmNicParam"))),
            }
        }
        out.push(NicParam {
            l3,
            ip: text_of(m, "ip")?.filter(|s| !s.is_empty()),
            mac: text_of(m, "mac")?.filter(|s| !s.is_empty()),
            netmask: text_of(m, "netmask")?.filter(|s| !s.is_empty()),
            gateway: text_of(m, "gateway")?.filter(|s| !s.is_empty()),
            meta_data: text_of(m, "metaData")?,
            driver,
            state,
        });
    }
    Ok(out)
}

/// `devices` (upstream `VmDevicesSpec`): only a TPM.
#[derive(Deserialize, Clone, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Devices {
    tpm: Option<TpmReq>,
}

/// `devices.tpm` (upstream `TpmSpec`, the fields a client may set; `enable` defaults to true).
#[derive(Deserialize, Clone)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TpmReq {
    #[serde(default = "yes")]
    enable: bool,
    key_provider_uuid: Option<String>,
    #[serde(default)]
    resource_key_created_new: bool,
}

fn yes() -> bool {
    true
}

/// The TPM a VM gets (recorded with the VM record).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct TpmPlan {
    uuid: String,
    key_provider_uuid: Option<String>,
    resource_key_created_new: bool,
}

/// What a VM made from a volume snapshot takes from it: the size of the snapshotted volume,
/// and platform / OS / architecture / image from that volume's VM or image.
#[derive(Clone, Default)]
struct SnapSrc {
    uuid: String,
    size: i64,
    actual_size: i64,
    format: Option<String>,
    image: Option<String>,
    platform: Option<String>,
    guest_os_type: Option<String>,
    architecture: Option<String>,
    virtio: bool,
}

/// A list of sizes: numbers, or the strings list validation turns them into.
fn sizes<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<i64>, D::Error> {
    let v: Vec<Value> = Deserialize::deserialize(d)?;
    v.iter()
        .map(|x| match x {
            Value::Number(n) => n.as_i64().ok_or_else(|| serde::de::Error::custom(format!("{n} is not a long"))),
            Value::String(s) => {
                s.trim().parse::<i64>().map_err(|_| serde::de::Error::custom(format!("{s} is not a long")))
            }
            other => Err(serde::de::Error::custom(format!("{other} is not a long"))),
        })
        .collect()
}

/// Parameters of the spec's table this build cannot honour yet: refused, never dropped.
const NOT_YET: &[&str] = &[
    // no TagPatternVO (tag2) resources exist in this management node to check them against
    "tagUuids",
];

/// The system tags CreateVmInstance accepts (upstream `VmSystemTags`), as the API table's patterns.
const VM_TAGS: &[&str] = &[
    "staticIp::{l3NetworkUuid}::{ip}",
    "ipv4Netmask::{l3NetworkUuid}::{netmask}",
    "ipv4Gateway::{l3NetworkUuid}::{gateway}",
    "customMac::{l3NetworkUuid}::{mac}",
];

/// The VM system tags of a create message, by kind, as (l3 uuid, value).
#[derive(Default)]
struct VmTags {
    ips: Vec<(String, String)>,
    netmasks: Vec<(String, String)>,
    gateways: Vec<(String, String)>,
    macs: Vec<(String, String)>,
    /// the tags the VM keeps (upstream deletes customMac once the NIC has it)
    kept: Vec<String>,
}

impl VmTags {
    fn parse(tags: &[String]) -> VmTags {
        let mut out = VmTags::default();
        for t in tags {
            let parts: Vec<&str> = t.splitn(3, "::").collect();
            let [kind, l3, value] = parts[..] else { continue };
            let pair = (l3.to_string(), value.to_string());
            match kind {
                "staticIp" => out.ips.push(pair),
                "ipv4Netmask" => out.netmasks.push(pair),
                "ipv4Gateway" => out.gateways.push(pair),
                "customMac" => {
                    out.macs.push(pair);
                    continue;
                }
                _ => continue,
            }
            out.kept.push(t.clone());
        }
        out
    }
}

/// Why `ip` cannot be taken on `l3` (upstream CheckIpAvailability reasons), or None.
async fn ip_unavailable(app: &App, l3: &str, ip: &str, n: i64) -> Result<Option<&'static str>> {
    let ranges = app
        .db
        .fetch_all(
            "SELECT start_ip_long, end_ip_long, gateway FROM ip_range WHERE l3_network_uuid = $1 AND ip_version = 4",
            &[Val::from(l3)],
        )
        .await?;
    let mut in_range = ranges.is_empty();
    for r in &ranges {
        let gw: Option<String> = r.try_get(2)?;
        if gw.as_deref() == Some(ip) {
            return Ok(Some("it is gateway"));
        }
        if r.try_get::<i64, _>(0)? <= n && n <= r.try_get::<i64, _>(1)? {
            in_range = true;
            break;
        }
    }
    if !in_range {
        return Ok(Some("it is not in this range"));
    }
    let used = app
        .db
        .fetch_optional(
            "SELECT 1 FROM used_ip WHERE l3_network_uuid = $1 AND ip_in_long = $2",
            &[Val::from(l3), Val::I(n)],
        )
        .await?;
    Ok(used.map(|_| "it is used"))
}

/// MAC rules of upstream `MacOperator.validateAvailableMac`.
fn check_mac(mac: &str) -> Result<()> {
    let m = mac.to_lowercase();
    let ok = m.len() == 17
        && m.split(':').count() == 6
        && m.split(':').all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()));
    if !ok {
        return Err(Error::operr(format!("Not a valid MAC address [{mac}]")));
    }
    if m == "00:00:00:00:00:00" || m == "ff:ff:ff:ff:ff:ff" {
        return Err(Error::operr("Disallowed address"));
    }
    if u8::from_str_radix(&m[..2], 16).unwrap_or(0) & 1 == 1 {
        return Err(Error::operr(format!("Expected unicast mac address, found multicast MAC address [{mac}]")));
    }
    Ok(())
}

/// staticIp / ipv4Netmask / ipv4Gateway / customMac tags: on one of the VM's L3 networks,
/// the IP in the L3's ranges, not its gateway and free, netmask and gateway as the range's,
/// the MAC a valid unicast one not used by another NIC.
async fn check_nic_tags(app: &App, tags: &VmTags, l3s: &[String]) -> Result<()> {
    let all = tags.ips.iter().chain(&tags.netmasks).chain(&tags.gateways).chain(&tags.macs);
    for (l3, _) in all {
        if !l3s.contains(l3) {
            return Err(Error::argerr(format!(
                "the system tags of the vm name l3Network[uuid:{l3}], which is not in l3NetworkUuids[{}]",
                l3s.join(", ")
            )));
        }
    }
    for (l3, ip) in &tags.ips {
        if tags.ips.iter().filter(|(l, _)| l == l3).count() > 1 {
            return Err(Error::argerr(format!("only one staticIp system tag is allowed per l3Network[uuid:{l3}]")));
        }
        let Some(n) = super::l3::ipv4(ip) else {
            return Err(Error::argerr(format!("the static IP[{ip}] format error")));
        };
        if let Some(why) = ip_unavailable(app, l3, ip, i64::from(n)).await? {
            return Err(Error::argerr(format!(
                "IP[{ip}] is not available on the L3 network[uuid:{l3}] because: {why}"
            )));
        }
        let range = app
            .db
            .fetch_optional(
                "SELECT netmask, gateway FROM ip_range WHERE l3_network_uuid = $1 AND ip_version = 4 \
                 AND ip_range_type = 'Normal' ORDER BY create_date LIMIT 1",
                &[Val::from(l3.as_str())],
            )
            .await?;
        let mask = tags.netmasks.iter().find(|(l, _)| l == l3).map(|(_, v)| v.as_str());
        let gw = tags.gateways.iter().find(|(l, _)| l == l3).map(|(_, v)| v.as_str());
        match range {
            None => {
                if mask.is_none() {
                    return Err(Error::operr("netmask must be set"));
                }
            }
            Some(r) => {
                let rmask: String = r.try_get(0)?;
                let rgw: Option<String> = r.try_get(1)?;
                if let Some(m) = mask {
                    if m != rmask {
                        return Err(Error::operr(format!("netmask error, expect: {rmask}, got: {m}")));
                    }
                }
                if let Some(g) = gw {
                    if Some(g) != rgw.as_deref() {
                        return Err(Error::operr(format!(
                            "gateway error, expect: {}, got: {g}",
                            rgw.unwrap_or_else(|| "null".into())
                        )));
                    }
                }
            }
        }
    }
    for (_, mac) in &tags.macs {
        check_mac(mac)?;
        if app
            .db
            .fetch_optional("SELECT 1 FROM vm_nic WHERE mac = $1", &[Val::from(mac.to_lowercase())])
            .await?
            .is_some()
        {
            return Err(Error::argerr(format!("Duplicate mac address [{}]", mac.to_lowercase())));
        }
    }
    Ok(())
}

async fn one_row(app: &App, sql: &str, uuid: &str) -> Result<Option<sqlx::any::AnyRow>> {
    app.db.fetch_optional(sql, &[Val::from(uuid)]).await
}

fn opt_str(row: &sqlx::any::AnyRow, i: usize) -> Result<Option<String>> {
    Ok(row.try_get::<Option<String>, _>(i)?)
}

/// The upstream interceptor checks (facts 4.2) for the supported parameters, in order;
/// fills the plan's derived fields.
async fn check_and_plan(app: &App, msg: &Msg, req: &mut CreateVm) -> Result<Ctx> {
    for f in NOT_YET {
        if !matches!(msg.fields.get(*f), None | Some(Value::Null)) {
            return Err(Error::argerr(format!(
                "parameter[{f}] of {} is not supported by this management node yet",
                msg.api
            )));
        }
    }
    // Only the VM_TAGS patterns pass the pipeline; parse them (checked below, in upstream order).
    let mut tags = VmTags::parse(&msg.system_tags());
    // 1. instance settings
    let (cpu_num, memory_size, mut reserved, cpu_speed, allocator) = match &req.instance_offering_uuid {
        Some(o) => {
            let row = one_row(
                app,
                "SELECT state, type, cpu_num, memory_size, reserved_memory_size, cpu_speed, allocator_strategy \
                 FROM instance_offering WHERE uuid = $1",
                o,
            )
            .await?
            .ok_or_else(|| Error::not_found(format!("instance offering[uuid:{o}] is not found")))?;
            let state: String = row.try_get(0)?;
            let ty: String = row.try_get(1)?;
            if state == "Disabled" {
                return Err(Error::operr(format!("instance offering[uuid:{o}] is Disabled, can't create vm from it")));
            }
            if ty != "UserVm" {
                return Err(Error::operr(format!(
                    "instance offering[uuid:{o}, type:{ty}] is not UserVm type, can't create vm from it"
                )));
            }
            let r: i64 = row.try_get(4)?;
            (
                row.try_get::<i64, _>(2)?,
                row.try_get::<i64, _>(3)?,
                req.reserved_memory_size.or(Some(r)),
                row.try_get::<i64, _>(5)?,
                opt_str(&row, 6)?,
            )
        }
        None => {
            let (Some(c), Some(m)) = (req.cpu_num, req.memory_size) else {
                return Err(Error::operr("Missing CPU/memory settings"));
            };
            if c <= 0 || m <= 0 {
                return Err(Error::operr("Unexpected CPU/memory settings"));
            }
            (c, m, req.reserved_memory_size, 0, None)
        }
    };
    if let Some(r) = reserved {
        if r > memory_size {
            return Err(Error::operr(format!("reserved memory[{r}] is greater than memory size[{memory_size}]")));
        }
    }
    if reserved == Some(0) {
        reserved = None;
    }
    // 3. the same MAC twice
    let mut seen_macs = std::collections::HashSet::new();
    for (_, mac) in &tags.macs {
        if !seen_macs.insert(mac.to_lowercase()) {
            return Err(Error::operr(format!("Not allowed same mac [{}]", mac.to_lowercase())));
        }
    }
    // 4. vmNicParams: checked, then their IP / netmask / gateway / MAC join the tags' (the same
    // availability and validity checks below), driver type, state and metadata go on the NIC
    let nic_params = match req.vm_nic_params.as_deref().filter(|s| !s.is_empty()) {
        None => Vec::new(),
        Some(text) => parse_nic_params(text, &req.l3_network_uuids)?,
    };
    for p in &nic_params {
        if let Some(ip) = &p.ip {
            tags.ips.push((p.l3.clone(), ip.clone()));
        }
        if let Some(m) = &p.netmask {
            tags.netmasks.push((p.l3.clone(), m.clone()));
        }
        if let Some(g) = &p.gateway {
            tags.gateways.push((p.l3.clone(), g.clone()));
        }
        if let Some(mac) = &p.mac {
            if !seen_macs.insert(mac.to_lowercase()) {
                return Err(Error::operr(format!("Not allowed same mac [{}]", mac.to_lowercase())));
            }
            tags.macs.push((p.l3.clone(), mac.clone()));
        }
    }
    // 5. L3 networks
    let mut first_l3_zone = None;
    for (i, l3) in req.l3_network_uuids.iter().enumerate() {
        if req.l3_network_uuids[..i].contains(l3) {
            return Err(Error::operr(format!("Can't add same uuid in the l3Network,uuid: {l3}")));
        }
        let row = one_row(app, "SELECT state, system, zone_uuid FROM l3_network WHERE uuid = $1", l3)
            .await?
            .ok_or_else(|| Error::not_found(format!("l3Network[uuid:{l3}] is not found")))?;
        if row.try_get::<String, _>(0)? == "Disabled" {
            return Err(Error::operr(format!("l3Network[uuid:{l3}] is Disabled, can not create vm on it")));
        }
        if row.try_get::<i64, _>(1)? != 0 && req.ty.as_deref().unwrap_or("UserVm") == "UserVm" {
            return Err(Error::operr(format!("l3Network[uuid:{l3}] is system network, can not create user vm on it")));
        }
        if i == 0 {
            first_l3_zone = Some(row.try_get::<String, _>(2)?);
        }
    }
    // static IPs and custom MACs (upstream StaticIpOperator / MacOperator validators)
    check_nic_tags(app, &tags, &req.l3_network_uuids).await?;
    let on_index = req.data_volume_system_tags_on_index.values().flatten();
    for t in req.root_volume_system_tags.iter().chain(&req.data_volume_system_tags).chain(on_index) {
        match t.strip_prefix("volumeProvisioningStrategy::") {
            Some("ThinProvisioning") | Some("ThickProvisioning") => {}
            _ => {
                return Err(Error::argerr(format!(
                    "volume system tag[{t}] is not supported: only volumeProvisioningStrategy::ThinProvisioning and \
                     volumeProvisioningStrategy::ThickProvisioning are accepted in rootVolumeSystemTags/dataVolumeSystemTags"
                )))
            }
        }
    }
    // 6. location precedence and states
    if req.host_uuid.is_some() {
        req.cluster_uuid = None;
        req.zone_uuid = None;
    } else if req.cluster_uuid.is_some() {
        req.zone_uuid = None;
    }
    let mut zone = req.zone_uuid.clone();
    let mut cluster = req.cluster_uuid.clone();
    let mut hypervisors: Vec<String> = Vec::new();
    if let Some(z) = &req.zone_uuid {
        if let Some(row) = one_row(app, "SELECT state FROM zone WHERE uuid = $1", z).await? {
            if row.try_get::<String, _>(0)? == "Disabled" {
                return Err(Error::operr(format!(
                    "zone[uuid:{z}] is specified but it's Disabled, can not create vm from it"
                )));
            }
        }
    }
    if let Some(c) = &req.cluster_uuid {
        if let Some(row) =
            one_row(app, "SELECT state, zone_uuid, hypervisor_type FROM cluster WHERE uuid = $1", c).await?
        {
            if row.try_get::<String, _>(0)? == "Disabled" {
                return Err(Error::operr(format!(
                    "cluster[uuid:{c}] is specified but it's Disabled, can not create vm from it"
                )));
            }
            zone = Some(row.try_get(1)?);
            hypervisors = vec![row.try_get(2)?];
        }
    }
    if let Some(h) = &req.host_uuid {
        if let Some(row) =
            one_row(app, "SELECT state, status, zone_uuid, cluster_uuid, hypervisor_type FROM host WHERE uuid = $1", h)
                .await?
        {
            let state: String = row.try_get(0)?;
            let status: String = row.try_get(1)?;
            if state == "Disabled" {
                return Err(Error::operr(format!(
                    "host[uuid:{h}] is specified but it's Disabled, can not create vm from it"
                )));
            }
            if status != "Connected" {
                return Err(Error::operr(format!(
                    "host[uuid:{h}] is specified but it's connection status is {status}, can not create vm from it"
                )));
            }
            zone = Some(row.try_get(2)?);
            cluster = Some(row.try_get(3)?);
            hypervisors = vec![row.try_get(4)?];
        }
    }
    // 7. type
    let ty = req.ty.clone().unwrap_or_else(|| "UserVm".into());
    let mut default_l3 = req.default_l3_network_uuid.clone();
    if ty == "UserVm" {
        if req.l3_network_uuids.len() > 1 && default_l3.is_none() {
            return Err(Error::argerr(
                "there are more than one L3 network specified in l3NetworkUuids, but defaultL3NetworkUuid is null",
            ));
        }
        if req.l3_network_uuids.len() == 1 {
            default_l3 = req.l3_network_uuids.first().cloned();
        }
        if let Some(d) = &default_l3 {
            if !req.l3_network_uuids.contains(d) {
                return Err(Error::argerr(format!(
                    "defaultL3NetworkUuid[uuid:{d}] is not in l3NetworkUuids[{}]",
                    req.l3_network_uuids.join(", ")
                )));
            }
        }
    }
    if zone.is_none() {
        zone = first_l3_zone;
    }
    // 9. somewhere to put it
    if req.l3_network_uuids.is_empty()
        && req.zone_uuid.is_none()
        && req.cluster_uuid.is_none()
        && req.host_uuid.is_none()
    {
        return Err(Error::operr(
            "could not create vm, because at least one of field (l3NetworkUuids,zoneUuid,clusterUuid,hostUuid) should be set",
        ));
    }
    // 10. diskAOs: the boot disk sets platform / guestOsType / architecture (and virtio from its
    // `driver::virtio` tag); it may be an existing volume, or name the root's template / size /
    // offering; every disk may name the (one) primary storage
    let mut root_from_volume: Option<String> = None;
    let mut root_name: Option<String> = None;
    let mut boot_tags: Vec<String> = Vec::new();
    if !req.disk_aos.is_empty() {
        let Some(boot) = req.disk_aos.iter().find(|d| d.boot).cloned() else {
            return Err(Error::argerr("missing root disk"));
        };
        req.platform = boot.platform.clone();
        req.guest_os_type = boot.guest_os_type.clone();
        req.architecture = boot.architecture.clone();
        req.virtio = Some(boot.system_tags.iter().any(|t| t == "driver::virtio"));
        for ao in &req.disk_aos {
            if let Some(p) = &ao.primary_storage_uuid {
                if one_row(app, "SELECT 1 FROM primary_storage WHERE uuid = $1", p).await?.is_none() {
                    return Err(Error::not_found(format!(
                        "invalid field[diskAOs.primaryStorageUuid], resource[uuid:{p}, type:PrimaryStorageVO] not found"
                    )));
                }
                match &req.primary_storage_uuid_for_root_volume {
                    Some(q) if q != p => {
                        return Err(Error::argerr(format!(
                        "diskAOs on different primary storages[{q}, {p}] are not supported by this management node yet"
                    )))
                    }
                    _ => req.primary_storage_uuid_for_root_volume = Some(p.clone()),
                }
            }
            for t in &ao.system_tags {
                let ok = matches!(
                    t.strip_prefix("volumeProvisioningStrategy::"),
                    Some("ThinProvisioning" | "ThickProvisioning")
                ) || (ao.boot && t == "driver::virtio");
                if !ok {
                    return Err(Error::argerr(format!(
                        "diskAOs system tag[{t}] is not supported: only volumeProvisioningStrategy::ThinProvisioning, \
                         volumeProvisioningStrategy::ThickProvisioning (and driver::virtio on the boot disk) are accepted"
                    )));
                }
            }
        }
        root_name = boot.name.clone();
        boot_tags = boot.system_tags.iter().filter(|t| *t != "driver::virtio").cloned().collect();
        if boot.source_uuid.is_some() {
            let (v, ps) = source_volume(app, &boot).await?;
            if req.primary_storage_uuid_for_root_volume.as_ref().is_some_and(|p| *p != ps) {
                return Err(Error::argerr(format!(
                    "the boot disk volume[uuid:{v}] is on primary storage[uuid:{ps}], not on the one asked for"
                )));
            }
            req.primary_storage_uuid_for_root_volume = Some(ps);
            root_from_volume = Some(v);
        } else {
            let conflict = |what: &str| Error::argerr(format!("the boot disk's {what} conflicts with the message's"));
            if let Some(t) = &boot.template_uuid {
                if req.image_uuid.as_ref().is_some_and(|i| i != t) {
                    return Err(conflict("templateUuid"));
                }
                req.image_uuid = Some(t.clone());
            }
            if boot.size > 0 {
                if req.root_disk_size.is_some_and(|s| s != boot.size) {
                    return Err(conflict("size"));
                }
                req.root_disk_size = Some(boot.size);
            }
            if let Some(o) = &boot.disk_offering_uuid {
                if req.root_disk_offering_uuid.as_ref().is_some_and(|x| x != o) {
                    return Err(conflict("diskOfferingUuid"));
                }
                req.root_disk_offering_uuid = Some(o.clone());
            }
        }
    }
    // 11. image
    let mut platform = req.platform.clone();
    let mut guest_os = req.guest_os_type.clone();
    let mut arch = req.architecture.clone();
    let mut image_size = 0i64;
    let mut image_actual = 0i64;
    let mut iso = false;
    let mut format = None;
    let mut image_virtio = false;
    if let Some(src) = &req.snapshot {
        // a copy of the snapshot: no image to check; what the image would give comes from the
        // snapshotted volume's VM (or image)
        platform = platform.or(src.platform.clone());
        guest_os = guest_os.or(src.guest_os_type.clone());
        arch = arch.or(src.architecture.clone());
        if platform.is_none() {
            return Err(Error::operr(format!(
                "platform is not set, neither in the message nor on the source of volume snapshot[uuid:{}]",
                src.uuid
            )));
        }
        image_size = src.size;
        image_actual = src.actual_size;
        format = src.format.clone();
        image_virtio = src.virtio;
    } else {
        match &req.image_uuid {
            None => {
                if platform.is_none()
                    || guest_os.is_none()
                    || arch.is_none()
                    || (req.root_disk_offering_uuid.is_none()
                        && req.root_disk_size.is_none()
                        && root_from_volume.is_none())
                {
                    return Err(Error::argerr(
                    "when imageUuid is null, [platform] is required, [guestOsType] is required, [architecture] is required, \
                     rootDiskOfferingUuid or rootDiskSize cannot be all null",
                ));
                }
            }
            Some(i) => {
                let row = one_row(
                app,
                "SELECT state, status, media_type, system, platform, guest_os_type, architecture, size, actual_size, format, \
                 virtio FROM image WHERE uuid = $1",
                i,
            )
            .await?
            .ok_or_else(|| Error::not_found(format!("image[uuid:{i}] is not found")))?;
                let state: String = row.try_get(0)?;
                let status: String = row.try_get(1)?;
                let media: String = row.try_get(2)?;
                let system: i64 = row.try_get(3)?;
                if state == "Disabled" {
                    return Err(Error::operr(format!("image[uuid:{i}] is Disabled, can't create vm from it")));
                }
                if status != "Ready" {
                    return Err(Error::operr(format!("image[uuid:{i}] is not ready yet, can't create vm from it")));
                }
                if media != "RootVolumeTemplate" && media != "ISO" {
                    return Err(Error::argerr(format!(
                    "image[uuid:{i}] is of mediaType: {media}, only RootVolumeTemplate and ISO can be used to create vm"
                )));
                }
                if system != 0 && ty == "UserVm" {
                    return Err(Error::argerr(format!(
                        "image[uuid:{i}] is system image, can't be used to create user vm"
                    )));
                }
                platform = platform.or(opt_str(&row, 4)?);
                guest_os = guest_os.or(opt_str(&row, 5)?);
                arch = arch.or(opt_str(&row, 6)?);
                if platform.is_none() {
                    return Err(Error::operr("platform is not set, neither in the message nor on the image"));
                }
                image_size = row.try_get::<Option<i64>, _>(7)?.unwrap_or(0);
                image_actual = row.try_get::<Option<i64>, _>(8)?.unwrap_or(0);
                iso = media == "ISO";
                format = Some(row.try_get::<String, _>(9)?);
                image_virtio = row.try_get::<i64, _>(10)? != 0;
                if iso {
                    if req.root_disk_offering_uuid.is_none() && req.root_disk_size.is_none() {
                        return Err(Error::argerr("image mediaType is ISO but missing root disk settings"));
                    }
                    if req.root_disk_size.is_some_and(|s| s <= 0) {
                        return Err(Error::operr("Unexpected root disk settings"));
                    }
                }
            }
        }
    }
    // 12. data disk sizes
    if req.data_disk_sizes.iter().any(|s| *s <= 0) {
        return Err(Error::operr("Unexpected data disk settings. dataDiskSizes need to be greater than 0"));
    }
    // 13. disk offerings
    let mut offerings: Vec<String> = req.data_disk_offering_uuids.clone();
    offerings.extend(req.root_disk_offering_uuid.clone());
    let mut disabled = Vec::new();
    let mut offering_size = std::collections::HashMap::new();
    for o in &offerings {
        let row = one_row(app, "SELECT state, disk_size FROM disk_offering WHERE uuid = $1", o)
            .await?
            .ok_or_else(|| Error::not_found(format!("disk offering[uuid:{o}] is not found")))?;
        if row.try_get::<String, _>(0)? == "Disabled" && !disabled.contains(o) {
            disabled.push(o.clone());
        }
        offering_size.insert(o.clone(), row.try_get::<i64, _>(1)?);
    }
    if !disabled.is_empty() {
        return Err(Error::operr(format!(
            "disk offerings[uuids:[{}]] are Disabled, can not create vm from it",
            disabled.join(", ")
        )));
    }

    // The plan: sizes and every id, fixed now. A root disk offering (or rootDiskSize, which
    // upstream turns into a temporary offering) sizes the root volume; a volume made from an
    // image is never smaller than the image.
    if req.root_disk_offering_uuid.is_none() && req.root_disk_size.is_some_and(|s| s <= 0) {
        return Err(Error::operr("Unexpected root disk settings"));
    }
    let asked = match (&req.root_disk_offering_uuid, req.root_disk_size) {
        (Some(o), _) => offering_size.get(o).copied(),
        (None, Some(s)) => Some(s),
        _ => None,
    };
    let root_size = if root_from_volume.is_some() {
        0
    } else if req.snapshot.is_some() {
        image_size
    } else if req.image_uuid.is_none() || iso {
        asked.unwrap_or(0)
    } else {
        asked.map_or(image_size, |a| a.max(image_size))
    };
    if hypervisors.is_empty() {
        hypervisors = match format.as_deref() {
            // qcow2/raw/vmdk images run on KVM; simulator hosts accept them too.
            Some("qcow2") | Some("raw") | Some("vmdk") => vec!["KVM".into(), "Simulator".into()],
            _ => vec!["KVM".into(), "Simulator".into()],
        };
    }
    // data volumes in upstream's order: disk offerings, then dataDiskSizes (upstream merges the
    // temporary offerings it makes of them after the given ones), then data volume templates
    let mut data_volumes: Vec<DataVol> = Vec::new();
    for o in &req.data_disk_offering_uuids {
        data_volumes.push(DataVol {
            uuid: new_uuid(),
            size: offering_size.get(o).copied().unwrap_or(0),
            offering: Some(o.clone()),
            ..DataVol::default()
        });
    }
    for sz in &req.data_disk_sizes {
        data_volumes.push(DataVol { uuid: new_uuid(), size: *sz, ..DataVol::default() });
    }
    // dataVolumeSystemTagsOnIndex: extra system tags for the n-th of those data volumes
    let n_disks = data_volumes.len();
    for (k, vtags) in &req.data_volume_system_tags_on_index {
        if vtags.is_empty() {
            continue;
        }
        match k.trim().parse::<usize>() {
            Ok(i) if i < n_disks => data_volumes[i].tags.extend(vtags.iter().cloned()),
            _ => {
                return Err(Error::argerr(format!(
                    "dataVolumeSystemTagsOnIndex[{k}] is invalid, it must be between 1 and {n_disks}"
                )))
            }
        }
    }
    // data volumes from DataVolumeTemplate images, sized as the image
    for (i, img) in req.data_volume_template_uuids.iter().enumerate() {
        if req.data_volume_template_uuids[..i].contains(img) {
            return Err(Error::argerr(format!(
                "duplicate data volume template[uuid:{img}] in dataVolumeTemplateUuids"
            )));
        }
        let row = one_row(app, "SELECT state, status, media_type, size, actual_size FROM image WHERE uuid = $1", img)
            .await?
            .ok_or_else(|| Error::not_found(format!("image[uuid:{img}] is not found")))?;
        let state: String = row.try_get(0)?;
        let status: String = row.try_get(1)?;
        let media: String = row.try_get(2)?;
        if media != "DataVolumeTemplate" {
            return Err(Error::argerr(format!(
                "image[uuid:{img}] is of mediaType: {media}, only DataVolumeTemplate can be used in dataVolumeTemplateUuids"
            )));
        }
        if state == "Disabled" {
            return Err(Error::operr(format!("image[uuid:{img}] is Disabled, can't create vm from it")));
        }
        if status != "Ready" {
            return Err(Error::operr(format!("image[uuid:{img}] is not ready yet, can't create vm from it")));
        }
        data_volumes.push(DataVol {
            uuid: new_uuid(),
            size: row.try_get::<Option<i64>, _>(3)?.unwrap_or(0),
            actual: row.try_get::<Option<i64>, _>(4)?.unwrap_or(0),
            image: Some(img.clone()),
            ..DataVol::default()
        });
    }
    // 15. non-boot diskAOs: exactly one of size / templateUuid / diskOfferingUuid / sourceUuid
    let keys = java_hash_set_order(&["size", "templateUuid", "diskOfferingUuid", "sourceUuid"]);
    for ao in req.disk_aos.iter().filter(|d| !d.boot) {
        let set: Vec<&str> = keys
            .iter()
            .copied()
            .filter(|k| match *k {
                "size" => ao.size > 0,
                "templateUuid" => ao.template_uuid.is_some(),
                "diskOfferingUuid" => ao.disk_offering_uuid.is_some(),
                _ => ao.source_uuid.is_some(),
            })
            .collect();
        if set.len() > 1 {
            let mut list = String::new();
            for k in &set {
                list += &format!("{k}, ");
            }
            return Err(Error::operr(format!("Cannot set the following properties at the same time: {list}")));
        }
        if set.is_empty() {
            return Err(Error::operr(format!(
                "Need to set one of the following properties, and can only be one of them: {}",
                keys.join(", ")
            )));
        }
    }
    for ao in req.disk_aos.iter().filter(|d| !d.boot) {
        let mut d =
            DataVol { uuid: new_uuid(), name: ao.name.clone(), tags: ao.system_tags.clone(), ..DataVol::default() };
        if ao.size > 0 {
            d.size = ao.size;
        } else if let Some(o) = &ao.disk_offering_uuid {
            let row = one_row(app, "SELECT state, disk_size FROM disk_offering WHERE uuid = $1", o).await?.ok_or_else(
                || {
                    Error::not_found(format!(
                        "invalid field[diskAOs.diskOfferingUuid], resource[uuid:{o}, type:DiskOfferingVO] not found"
                    ))
                },
            )?;
            if row.try_get::<String, _>(0)? == "Disabled" {
                return Err(Error::operr(format!(
                    "disk offerings[uuids:[{o}]] are Disabled, can not create vm from it"
                )));
            }
            d.size = row.try_get(1)?;
            d.offering = Some(o.clone());
        } else if let Some(img) = &ao.template_uuid {
            let row =
                one_row(app, "SELECT state, status, media_type, size, actual_size FROM image WHERE uuid = $1", img)
                    .await?
                    .ok_or_else(|| {
                        Error::not_found(format!(
                            "invalid field[diskAOs.templateUuid], resource[uuid:{img}, type:ImageVO] not found"
                        ))
                    })?;
            let media: String = row.try_get(2)?;
            if media != "DataVolumeTemplate" {
                return Err(Error::argerr(format!(
                    "image[uuid:{img}] is of mediaType: {media}, only DataVolumeTemplate can be used as a diskAOs templateUuid"
                )));
            }
            if row.try_get::<String, _>(0)? == "Disabled" || row.try_get::<String, _>(1)? != "Ready" {
                return Err(Error::operr(format!(
                    "image[uuid:{img}] is Disabled or not ready yet, can't create vm from it"
                )));
            }
            d.size = row.try_get::<Option<i64>, _>(3)?.unwrap_or(0);
            d.actual = row.try_get::<Option<i64>, _>(4)?.unwrap_or(0);
            d.image = Some(img.clone());
        } else {
            let (v, ps) = source_volume(app, ao).await?;
            if req.primary_storage_uuid_for_root_volume.as_ref().is_some_and(|p| *p != ps) {
                return Err(Error::argerr(format!(
                    "the disk volume[uuid:{v}] is on primary storage[uuid:{ps}], not on the one the other disks use"
                )));
            }
            if data_volumes.iter().any(|x| x.uuid == v) || root_from_volume.as_ref() == Some(&v) {
                return Err(Error::argerr(format!("duplicated diskAOs.sourceUuid: {v}")));
            }
            req.primary_storage_uuid_for_root_volume = Some(ps);
            d.uuid = v;
            d.adopt = true;
            d.tags.clear();
        }
        data_volumes.push(d);
    }
    let allocator = if req.host_uuid.is_some() {
        "DesignatedHostAllocatorStrategy".to_string()
    } else {
        allocator.unwrap_or_else(|| "DesignatedHostAllocatorStrategy".into())
    };
    let strategy = req.strategy.clone().unwrap_or_else(|| "InstantStart".into());
    // virtio (upstream NewVmInstanceMsgBuilder): the message's, else the image's; a virtio VM
    // carries the `driver::virtio` system tag. NICs use the paravirtual driver (virtio) when the
    // image supports it, the platform is paravirtual (Linux, WindowsVirtio, Paravirtualization)
    // or the VM is virtio; else e1000 (upstream VmNicManagerImpl.setNicDriverType).
    let virtio = req.virtio.unwrap_or(image_virtio);
    let mut system_tags = tags.kept;
    if virtio {
        system_tags.push("driver::virtio".to_string());
    }
    let pv_platform = matches!(platform.as_deref(), Some("Linux" | "WindowsVirtio" | "Paravirtualization"));
    let nic_driver = if image_virtio || pv_platform || virtio { "virtio" } else { "e1000" };
    Ok(Ctx {
        vm_uuid: msg.resource_uuid(),
        name: req.name.clone(),
        description: req.description.clone(),
        account_uuid: msg.account_uuid().to_string(),
        zone_uuid: zone,
        cluster_uuid: cluster,
        designated_host: req.host_uuid.clone(),
        image_uuid: req.image_uuid.clone().or_else(|| req.snapshot.as_ref().and_then(|s| s.image.clone())),
        instance_offering_uuid: req.instance_offering_uuid.clone(),
        cpu_num,
        cpu_speed,
        memory_size,
        reserved_memory_size: reserved,
        platform,
        guest_os_type: guest_os,
        architecture: arch,
        vm_type: ty,
        allocator_strategy: allocator,
        strategy,
        hypervisors,
        primary_storage_for_root: req.primary_storage_uuid_for_root_volume.clone(),
        root_volume_uuid: root_from_volume.clone().unwrap_or_else(new_uuid),
        root_from_volume: root_from_volume.is_some(),
        root_name,
        root_size,
        root_actual_size: image_actual,
        root_disk_offering: req.root_disk_offering_uuid.clone(),
        data_volumes,
        cdrom_uuid: new_uuid(),
        default_l3,
        nics: req
            .l3_network_uuids
            .iter()
            .map(|l3| {
                let p = nic_params.iter().find(|p| &p.l3 == l3).cloned().unwrap_or_default();
                Nic {
                    uuid: new_uuid(),
                    l3: l3.clone(),
                    ip: tags.ips.iter().find(|(l, _)| l == l3).map(|(_, ip)| ip.clone()),
                    mac: tags.macs.iter().find(|(l, _)| l == l3).map(|(_, m)| m.to_lowercase()),
                    driver: p.driver,
                    state: p.state,
                    meta_data: p.meta_data,
                }
            })
            .collect(),
        user_tags: msg.user_tags(),
        system_tags,
        nic_driver: Some(nic_driver.to_string()),
        tpm: req.devices.as_ref().and_then(|d| d.tpm.as_ref()).filter(|t| t.enable).map(|t| TpmPlan {
            uuid: new_uuid(),
            key_provider_uuid: t.key_provider_uuid.clone(),
            resource_key_created_new: t.resource_key_created_new,
        }),
        from_snapshot: req.snapshot.as_ref().map(|s| s.uuid.clone()),
        root_volume_tags: req.root_volume_system_tags.iter().chain(&boot_tags).cloned().collect(),
        data_volume_tags: req.data_volume_system_tags.clone(),
        ssh_key_pairs: req.ssh_key_pair_uuids.clone(),
        host: None,
        ps: None,
        request: None,
    })
}

// ---------------------------------------------------------------------------------------
// The saga

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct DataVol {
    uuid: String,
    size: i64,
    offering: Option<String>,
    /// a DataVolumeTemplate image the volume is made from
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    actual: i64,
    /// system tags for this volume only (dataVolumeSystemTagsOnIndex, diskAOs)
    #[serde(default)]
    tags: Vec<String>,
    /// a diskAO's name for the volume
    #[serde(default)]
    name: Option<String>,
    /// an existing volume (diskAOs sourceUuid) attached as it is: nothing created or reserved
    #[serde(default)]
    adopt: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Nic {
    uuid: String,
    l3: String,
    /// a static IP (`staticIp::` tag)
    #[serde(default)]
    ip: Option<String>,
    /// a custom MAC (`customMac::` tag or vmNicParams), lower-cased
    #[serde(default)]
    mac: Option<String>,
    /// vmNicParams: driver type, state (enable|disable), metadata
    #[serde(default)]
    driver: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    meta_data: Option<String>,
}

/// Everything the creation saga needs, ids included; stored with its progress.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Ctx {
    vm_uuid: String,
    name: String,
    description: Option<String>,
    account_uuid: String,
    zone_uuid: Option<String>,
    cluster_uuid: Option<String>,
    designated_host: Option<String>,
    image_uuid: Option<String>,
    instance_offering_uuid: Option<String>,
    cpu_num: i64,
    cpu_speed: i64,
    memory_size: i64,
    reserved_memory_size: Option<i64>,
    platform: Option<String>,
    guest_os_type: Option<String>,
    architecture: Option<String>,
    vm_type: String,
    allocator_strategy: String,
    strategy: String,
    hypervisors: Vec<String>,
    primary_storage_for_root: Option<String>,
    root_volume_uuid: String,
    root_size: i64,
    root_actual_size: i64,
    root_disk_offering: Option<String>,
    /// the root volume is an existing volume (boot diskAO with sourceUuid), attached as it is
    #[serde(default)]
    root_from_volume: bool,
    /// the boot diskAO's name for the root volume
    #[serde(default)]
    root_name: Option<String>,
    data_volumes: Vec<DataVol>,
    cdrom_uuid: String,
    default_l3: Option<String>,
    /// one NIC per L3 network, device ids in this order
    nics: Vec<Nic>,
    user_tags: Vec<String>,
    /// system tags recorded on the VM (staticIp, ipv4Netmask, ipv4Gateway)
    #[serde(default)]
    system_tags: Vec<String>,
    /// system tags recorded on the root / data volumes
    #[serde(default)]
    root_volume_tags: Vec<String>,
    #[serde(default)]
    data_volume_tags: Vec<String>,
    #[serde(default)]
    ssh_key_pairs: Vec<String>,
    /// NIC driver type (virtio or e1000); None in plans stored before it existed (virtio)
    #[serde(default)]
    nic_driver: Option<String>,
    /// a TPM device (`devices.tpm.enable`)
    #[serde(default)]
    tpm: Option<TpmPlan>,
    /// the volume snapshot the root volume is a copy of (CreateVmInstanceFromVolumeSnapshot)
    #[serde(default)]
    from_snapshot: Option<String>,
    /// the host chosen (set by allocate-host)
    host: Option<String>,
    /// the primary storage chosen (set by allocate-primary-storage)
    ps: Option<String>,
    /// the canonical JSON of the request (see [`request_fingerprint`]), kept with the VM
    #[serde(default)]
    request: Option<String>,
}

impl Ctx {
    fn disk_total(&self) -> i64 {
        self.root_size + self.data_volumes.iter().map(|d| d.size).sum::<i64>()
    }
}

pub static CREATE_VM: SagaDef<Ctx> = SagaDef {
    kind: "create-vm",
    steps: &[
        Step { name: "create-vm-record", run: record_do, undo: record_undo },
        Step { name: "allocate-host", run: host_do, undo: host_undo },
        Step { name: "allocate-primary-storage", run: ps_do, undo: ps_undo },
        Step { name: "create-volumes", run: volumes_do, undo: volumes_undo },
        Step { name: "allocate-nics", run: nics_do, undo: nics_undo },
        Step { name: "create-cdrom", run: cdrom_do, undo: cdrom_undo },
        Step { name: "instantiate-on-host", run: instantiate_do, undo: instantiate_undo },
        Step { name: "finish", run: finish_do, undo: saga::nothing },
    ],
};

/// Starting a `Created` (JustCreate) VM: the rest of the creation plan, after the state moves
/// from Created to Starting (undone back to Created).
pub static START_CREATED: SagaDef<Ctx> = SagaDef {
    kind: "start-created-vm",
    steps: &[
        Step { name: "mark-starting", run: starting_do, undo: starting_undo },
        Step { name: "allocate-host", run: host_do, undo: host_undo },
        Step { name: "allocate-primary-storage", run: ps_do, undo: ps_undo },
        Step { name: "create-volumes", run: volumes_do, undo: volumes_undo },
        Step { name: "allocate-nics", run: nics_do, undo: nics_undo },
        Step { name: "create-cdrom", run: cdrom_do, undo: cdrom_undo },
        Step { name: "instantiate-on-host", run: instantiate_do, undo: instantiate_undo },
        Step { name: "finish", run: finish_do, undo: saga::nothing },
    ],
};

fn starting_do<'a>(_app: &'a App, tx: &'a mut WriteTx, c: &'a mut Ctx) -> BoxFuture<'a, Result<()>> {
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

fn starting_undo<'a>(_app: &'a App, tx: &'a mut WriteTx, c: &'a mut Ctx) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        tx.execute(
            "UPDATE vm_instance SET state = 'Created', cluster_uuid = $1, zone_uuid = $2 WHERE uuid = $3 AND state = 'Starting'",
            &[Val::from(c.cluster_uuid.clone()), Val::from(c.zone_uuid.clone()), Val::from(c.vm_uuid.as_str())],
        )
        .await?;
        Ok(())
    })
}

/// `JustCreate`: only the record.
pub static JUST_CREATE: SagaDef<Ctx> =
    SagaDef { kind: "create-vm-just", steps: &[Step { name: "create-vm-record", run: record_do, undo: record_undo }] };

/// Unwind a stored saga of one of this module's kinds; `Ok(false)` for an unknown kind.
pub async fn unwind_saga(app: &App, kind: &str, id: &str, step: i64, state: &str, data: &str) -> Result<bool> {
    let def = match kind {
        "create-vm" => &CREATE_VM,
        "create-vm-just" => &JUST_CREATE,
        "start-created-vm" => &START_CREATED,
        _ => return Ok(false),
    };
    saga::unwind_row(app, def, id, step, state, data).await?;
    Ok(true)
}

fn record_do<'a>(_app: &'a App, tx: &'a mut WriteTx, c: &'a mut Ctx) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        let row = tx
            .fetch_optional(
                "UPDATE vm_internal_id SET next_value = next_value + 1 WHERE id = 1 RETURNING next_value",
                &[],
            )
            .await?
            .ok_or_else(|| Error::Internal("the vm internal id sequence is missing".into()))?;
        let internal_id: i64 = row.try_get(0)?;
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
                Val::from(c.allocator_strategy.as_str()),
                Val::from(state),
                Val::I(internal_id),
                Val::from(c.guest_os_type.clone()),
                Val::I(now),
                Val::from(c.default_l3.clone()),
                Val::from(c.request.clone()),
            ],
        )
        .await?;
        super::own(tx, &c.vm_uuid, VM.vo, &c.account_uuid).await?;
        super::tag::attach_create_tags(tx, &c.vm_uuid, VM.vo, &c.system_tags, &c.user_tags).await?;
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
            super::own(tx, &t.uuid, TPM.vo, &c.account_uuid).await?;
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

fn record_undo<'a>(_app: &'a App, tx: &'a mut WriteTx, c: &'a mut Ctx) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        tx.execute("DELETE FROM vm_instance WHERE uuid = $1", &[Val::from(c.vm_uuid.as_str())]).await?;
        tx.execute("DELETE FROM ssh_key_pair_ref WHERE resource_uuid = $1", &[Val::from(c.vm_uuid.as_str())]).await?;
        if let Some(t) = &c.tpm {
            tx.execute("DELETE FROM tpm WHERE uuid = $1", &[Val::from(t.uuid.as_str())]).await?;
            super::disown(tx, &t.uuid).await?;
        }
        super::tag::delete_for_resource(tx, &c.vm_uuid).await?;
        super::disown(tx, &c.vm_uuid).await?;
        Ok(())
    })
}

fn in_list(col: &str, first: usize, n: usize) -> String {
    let ps: Vec<String> = (0..n).map(|i| format!("${}", first + i)).collect();
    format!("{col} IN ({})", ps.join(", "))
}

fn host_alloc_error(details: String) -> Error {
    Error::Api(ErrorCode::new(HOST_ALLOCATION_1000, details))
}

/// Host allocation (facts 6.1): filters in SQL, sort by strategy, then the first host whose
/// atomic reservation succeeds.
fn host_do<'a>(app: &'a App, tx: &'a mut WriteTx, c: &'a mut Ctx) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        // location + state + hypervisor
        let mut vals: Vec<Val> = Vec::new();
        let mut base = String::from("h.state = 'Enabled' AND h.status = 'Connected'");
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
        for l3 in c.nics.iter().map(|n| n.l3.as_str()) {
            vals.push(Val::from(l3));
            base += &format!(
                " AND EXISTS (SELECT 1 FROM l3_network l JOIN l2_network_cluster_ref r ON r.l2_network_uuid = l.l2_network_uuid \
                 WHERE l.uuid = ${} AND r.cluster_uuid = h.cluster_uuid)",
                vals.len()
            );
        }
        let count = |sql: String, vals: Vec<Val>| async move {
            let row = tx_count(&app.db, &sql, &vals).await?;
            Ok::<i64, Error>(row)
        };
        if count(format!("SELECT COUNT(*) FROM host h WHERE {base}"), vals.clone()).await? == 0 {
            return Err(host_alloc_error(format!(
                "no host having state=Enabled status=Connected hypervisorType={} found",
                c.hypervisors.join(",")
            )));
        }
        if let (Some(img), None) = (&c.image_uuid, &c.from_snapshot) {
            vals.push(Val::from(img.as_str()));
            base += &format!(
                " AND EXISTS (SELECT 1 FROM image_backup_storage_ref ibr JOIN backup_storage_zone_ref bz \
                 ON bz.backup_storage_uuid = ibr.backup_storage_uuid JOIN backup_storage b ON b.uuid = ibr.backup_storage_uuid \
                 WHERE ibr.image_uuid = ${} AND ibr.status = 'Ready' AND bz.zone_uuid = h.zone_uuid AND b.status = 'Connected')",
                vals.len()
            );
            if count(format!("SELECT COUNT(*) FROM host h WHERE {base}"), vals.clone()).await? == 0 {
                return Err(host_alloc_error(format!(
                    "no host found in zones that attaches to backup storage where image[{img}] is on"
                )));
            }
        }
        vals.push(Val::I(c.cpu_num));
        vals.push(Val::I(c.memory_size));
        base += &format!(
            " AND h.available_cpu >= ${} AND h.available_memory >= ${m} AND h.total_physical_memory > ${m}",
            vals.len() - 1,
            m = vals.len()
        );
        if count(format!("SELECT COUNT(*) FROM host h WHERE {base}"), vals.clone()).await? == 0 {
            return Err(host_alloc_error(format!(
                "no host having cpu[{}], memory[{} bytes] found",
                c.cpu_num, c.memory_size
            )));
        }
        let disk = c.disk_total();
        vals.push(Val::I(disk));
        let mut ps_filter = format!("p.available_capacity >= ${}", vals.len());
        if let Some(p) = &c.primary_storage_for_root {
            vals.push(Val::from(p.as_str()));
            ps_filter += &format!(" AND p.uuid = ${}", vals.len());
        }
        base += &format!(
            " AND EXISTS (SELECT 1 FROM primary_storage_cluster_ref r JOIN primary_storage p ON p.uuid = r.primary_storage_uuid \
             WHERE r.cluster_uuid = h.cluster_uuid AND p.state = 'Enabled' AND p.status = 'Connected' AND {ps_filter})"
        );
        let order = if c.allocator_strategy.contains("LeastVmPreferred") {
            "(SELECT COUNT(*) FROM vm_instance v WHERE v.host_uuid = h.uuid), random()"
        } else {
            "random()"
        };
        let rows = tx
            .fetch_all(&format!("SELECT h.uuid, h.cluster_uuid, h.zone_uuid, h.hypervisor_type FROM host h WHERE {base} ORDER BY {order}"), &vals)
            .await?;
        if rows.is_empty() {
            return Err(host_alloc_error(format!(
                "cannot find available primary storage[state: Enabled, status: Connected, available capacity {disk} bytes]"
            )));
        }
        for row in rows {
            let h: String = row.try_get(0)?;
            if !super::host::reserve(app, tx, &h, c.cpu_num, c.memory_size).await? {
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
                    Val::from(hv),
                    Val::I(c.cpu_num),
                    Val::I(c.memory_size),
                    Val::I(now_ms()),
                    Val::from(c.vm_uuid.as_str()),
                ],
            )
            .await?;
            c.host = Some(h);
            c.cluster_uuid = Some(cluster);
            c.zone_uuid = Some(zone);
            return Ok(());
        }
        Err(host_alloc_error(format!("no host having cpu[{}], memory[{} bytes] found", c.cpu_num, c.memory_size)))
    })
}

async fn tx_count(db: &crate::db::Db, sql: &str, vals: &[Val]) -> Result<i64> {
    let row = db.fetch_optional(sql, vals).await?;
    Ok(match row {
        Some(r) => r.try_get::<i64, _>(0)?,
        None => 0,
    })
}

/// Give back the host capacity the VM row says it holds (compare-and-set: once only).
async fn release_host(tx: &mut WriteTx, vm_uuid: &str) -> Result<()> {
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
        super::host::release(tx, &h, cpu, mem).await?;
    }
    Ok(())
}

fn host_undo<'a>(_app: &'a App, tx: &'a mut WriteTx, c: &'a mut Ctx) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        release_host(tx, &c.vm_uuid).await?;
        tx.execute(
            "UPDATE vm_instance SET host_uuid = NULL, hypervisor_type = NULL WHERE uuid = $1",
            &[Val::from(c.vm_uuid.as_str())],
        )
        .await?;
        c.host = None;
        Ok(())
    })
}

/// Primary storage for the volumes (facts 6.2): Enabled + Connected, attached to the host's
/// cluster, enough capacity, most available first; the reservation is one UPDATE.
fn ps_do<'a>(_app: &'a App, tx: &'a mut WriteTx, c: &'a mut Ctx) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        let cluster = c.cluster_uuid.clone().unwrap_or_default();
        let size = c.disk_total();
        let mut vals = vec![Val::from(cluster.as_str()), Val::I(size)];
        let mut filter = String::new();
        if let Some(p) = &c.primary_storage_for_root {
            vals.push(Val::from(p.as_str()));
            filter = " AND p.uuid = $3".into();
        }
        let rows = tx
            .fetch_all(
                &format!(
                    "SELECT p.uuid FROM primary_storage p JOIN primary_storage_cluster_ref r ON r.primary_storage_uuid = p.uuid \
                     WHERE r.cluster_uuid = $1 AND p.state = 'Enabled' AND p.status = 'Connected' \
                     AND p.available_capacity >= $2{filter} ORDER BY p.available_capacity DESC, p.uuid"
                ),
                &vals,
            )
            .await?;
        let now = now_ms();
        for row in rows {
            let p: String = row.try_get(0)?;
            let n = tx
                .execute(
                    "UPDATE primary_storage SET available_capacity = available_capacity - $1, last_op_date = $2 \
                     WHERE uuid = $3 AND available_capacity >= $1 AND state = 'Enabled' AND status = 'Connected'",
                    &[Val::I(size), Val::I(now), Val::from(p.as_str())],
                )
                .await?;
            if n == 1 {
                tx.execute(
                    "UPDATE vm_instance SET reserved_ps_uuid = $1, reserved_ps_size = $2 WHERE uuid = $3",
                    &[Val::from(p.as_str()), Val::I(size), Val::from(c.vm_uuid.as_str())],
                )
                .await?;
                c.ps = Some(p);
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

/// Give back the primary-storage capacity still held on the VM row (compare-and-set).
async fn release_ps(tx: &mut WriteTx, vm_uuid: &str) -> Result<()> {
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
    }
    Ok(())
}

fn ps_undo<'a>(_app: &'a App, tx: &'a mut WriteTx, c: &'a mut Ctx) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        release_ps(tx, &c.vm_uuid).await?;
        c.ps = None;
        Ok(())
    })
}

/// Root and data volume rows; each takes its share of the VM's primary-storage reservation.
fn volumes_do<'a>(_app: &'a App, tx: &'a mut WriteTx, c: &'a mut Ctx) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        let ps = c.ps.clone().ok_or_else(|| Error::Internal("no primary storage allocated".into()))?;
        let url: String = tx
            .fetch_optional("SELECT url FROM primary_storage WHERE uuid = $1", &[Val::from(ps.as_str())])
            .await?
            .map(|r| r.try_get::<String, _>(0))
            .transpose()?
            .unwrap_or_default();
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
        for (uuid, name, ty, size, actual, offering, image, device) in vols {
            let dir = if ty == "Root" { "rootVolumes" } else { "dataVolumes" };
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
            super::own(tx, &uuid, VOLUME.vo, &c.account_uuid).await?;
            let mut vtags = if ty == "Root" { c.root_volume_tags.clone() } else { c.data_volume_tags.clone() };
            if let Some(d) = c.data_volumes.iter().find(|d| d.uuid == uuid) {
                // a tag on the volume's index wins over the general one of the same kind
                vtags.retain(|t| !d.tags.iter().any(|x| x.split("::").next() == t.split("::").next()));
                vtags.extend(d.tags.iter().cloned());
            }
            super::tag::attach_create_tags(tx, &uuid, VOLUME.vo, &vtags, &[]).await?;
            tx.execute(
                "UPDATE vm_instance SET reserved_ps_size = reserved_ps_size - $1 WHERE uuid = $2",
                &[Val::I(size), Val::from(c.vm_uuid.as_str())],
            )
            .await?;
        }
        tx.execute(
            "UPDATE vm_instance SET root_volume_uuid = $1 WHERE uuid = $2",
            &[Val::from(c.root_volume_uuid.as_str()), Val::from(c.vm_uuid.as_str())],
        )
        .await?;
        Ok(())
    })
}

fn volumes_undo<'a>(_app: &'a App, tx: &'a mut WriteTx, c: &'a mut Ctx) -> BoxFuture<'a, Result<()>> {
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
            if n == 1 {
                // back to the VM's hold; the primary-storage undo returns it to the storage
                tx.execute(
                    "UPDATE vm_instance SET reserved_ps_size = reserved_ps_size + $1 WHERE uuid = $2",
                    &[Val::I(size), Val::from(c.vm_uuid.as_str())],
                )
                .await?;
            }
            super::tag::delete_for_resource(tx, &u).await?;
            super::disown(tx, &u).await?;
        }
        tx.execute("UPDATE vm_instance SET root_volume_uuid = NULL WHERE uuid = $1", &[Val::from(c.vm_uuid.as_str())])
            .await?;
        Ok(())
    })
}

/// One empty CD-ROM drive (upstream `vm.vmDefaultCdRomNum` = 1), device 0.
fn cdrom_do<'a>(_app: &'a App, tx: &'a mut WriteTx, c: &'a mut Ctx) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        tx.execute(
            "INSERT INTO vm_cdrom (uuid, vm_instance_uuid, device_id, name, create_date, last_op_date) \
             VALUES ($1, $2, 0, $3, $4, $4)",
            &[
                Val::from(c.cdrom_uuid.as_str()),
                Val::from(c.vm_uuid.as_str()),
                Val::S(format!("vm-{}-cdRom", c.vm_uuid)),
                Val::I(now_ms()),
            ],
        )
        .await?;
        Ok(())
    })
}

fn cdrom_undo<'a>(_app: &'a App, tx: &'a mut WriteTx, c: &'a mut Ctx) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        tx.execute("DELETE FROM vm_cdrom WHERE vm_instance_uuid = $1", &[Val::from(c.vm_uuid.as_str())]).await?;
        Ok(())
    })
}

/// Create the VM on its host. Simulator hosts run it by definition; KVM hosts through the host
/// agent: image cache → volumes → network → QEMU.
fn instantiate_do<'a>(_app: &'a App, tx: &'a mut WriteTx, c: &'a mut Ctx) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        let h = c.host.clone().unwrap_or_default();
        let hv: Option<String> = tx
            .fetch_optional("SELECT hypervisor_type FROM host WHERE uuid = $1", &[Val::from(h.as_str())])
            .await?
            .map(|r| r.try_get::<String, _>(0))
            .transpose()?;
        match hv.as_deref() {
            Some("Simulator") => Ok(()),
            Some("KVM") => {
                let plan = kvm::plan(tx, c, &h).await?;
                if let Err(e) = kvm::instantiate(&plan).await {
                    kvm::teardown(&plan).await;
                    return Err(e);
                }
                Ok(())
            }
            other => Err(Error::Api(ErrorCode::new(
                HOST_1005,
                format!(
                    "cannot start vm[uuid:{}] on host[uuid:{h}, hypervisorType:{}]: creating VMs on this hypervisor is not supported yet",
                    c.vm_uuid,
                    other.unwrap_or("unknown")
                ),
            ))),
        }
    })
}

fn instantiate_undo<'a>(_app: &'a App, tx: &'a mut WriteTx, c: &'a mut Ctx) -> BoxFuture<'a, Result<()>> {
    // Destroying a simulated VM has nothing to do; a KVM VM is torn down through its agent.
    Box::pin(async move {
        let h = c.host.clone().unwrap_or_default();
        let hv: Option<String> = tx
            .fetch_optional("SELECT hypervisor_type FROM host WHERE uuid = $1", &[Val::from(h.as_str())])
            .await?
            .map(|r| r.try_get::<String, _>(0))
            .transpose()?;
        if hv.as_deref() == Some("KVM") {
            if let Ok(plan) = kvm::plan(tx, c, &h).await {
                kvm::teardown(&plan).await;
            }
        }
        Ok(())
    })
}

/// The final state: Running on its host (InstantStart), or Stopped with the host's capacity
/// given back and only lastHostUuid kept (CreateStopped).
fn finish_do<'a>(_app: &'a App, tx: &'a mut WriteTx, c: &'a mut Ctx) -> BoxFuture<'a, Result<()>> {
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

/// Eight random bytes (from a v4 uuid).
fn random_bytes() -> [u8; 8] {
    let u = new_uuid();
    let mut out = [0u8; 8];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(u.get(i * 2..i * 2 + 2).unwrap_or("00"), 16).unwrap_or(0);
    }
    out
}

/// A MAC in upstream's scheme: `fa:` + four random bytes + the device id.
fn mac_for(device: i64) -> String {
    let r = random_bytes();
    format!("fa:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", r[0], r[1], r[2], r[3], device & 0xff)
}

pub const L3_1000: Code = Code { code: "L3.1000", description: "Unable to allocate an ip address from L3Network" };

/// Take a free address of `l3` (random strategy): a random free candidate of a random range is
/// inserted into `used_ip`, whose UNIQUE (l3, ipInLong) makes a double allocation impossible;
/// a conflict means someone else took it, so pick again.
async fn allocate_ip(
    tx: &mut WriteTx,
    l3: &str,
    nic_uuid: &str,
    ip_uuid: &str,
    required: Option<&str>,
) -> Result<(String, String, Option<String>)> {
    if let Some(ip) = required {
        return allocate_required_ip(tx, l3, nic_uuid, ip_uuid, ip).await;
    }
    let ranges = tx
        .fetch_all(
            "SELECT uuid, start_ip_long, end_ip_long, netmask, gateway FROM ip_range \
             WHERE l3_network_uuid = $1 AND ip_version = 4 AND ip_range_type = 'Normal' ORDER BY random()",
            &[Val::from(l3)],
        )
        .await?;
    // reserved IP ranges of the L3 are never handed out by the allocator (a static IP may name one)
    let mut reserved: Vec<(i64, i64)> = Vec::new();
    for r in tx
        .fetch_all(
            "SELECT start_ip, end_ip FROM reserved_ip_range WHERE l3_network_uuid = $1 AND ip_version = 4",
            &[Val::from(l3)],
        )
        .await?
    {
        let a: String = r.try_get(0)?;
        let b: String = r.try_get(1)?;
        if let (Some(a), Some(b)) = (super::l3::ipv4(&a), super::l3::ipv4(&b)) {
            reserved.push((i64::from(a.min(b)), i64::from(a.max(b))));
        }
    }
    let is_reserved = |n: i64| reserved.iter().any(|(a, b)| *a <= n && n <= *b);
    for r in ranges {
        let range: String = r.try_get(0)?;
        let start: i64 = r.try_get(1)?;
        let end: i64 = r.try_get(2)?;
        let netmask: String = r.try_get(3)?;
        let gateway: Option<String> = r.try_get(4)?;
        let gw = gateway.as_deref().and_then(super::l3::ipv4).map(i64::from);
        for _attempt in 0..16 {
            let used: std::collections::HashSet<i64> = tx
                .fetch_all(
                    "SELECT ip_in_long FROM used_ip WHERE l3_network_uuid = $1 AND ip_in_long >= $2 AND ip_in_long <= $3",
                    &[Val::from(l3), Val::I(start), Val::I(end)],
                )
                .await?
                .iter()
                .map(|row| row.try_get::<i64, _>(0))
                .collect::<std::result::Result<_, _>>()?;
            let free: Vec<i64> =
                (start..=end).filter(|n| !used.contains(n) && Some(*n) != gw && !is_reserved(*n)).take(256).collect();
            if free.is_empty() {
                break;
            }
            let pick = free[(u64::from_le_bytes(random_bytes()) % free.len() as u64) as usize];
            let ip = super::l3::ipv4_str(pick as u32);
            let n = tx
                .execute(
                    "INSERT INTO used_ip (uuid, ip_range_uuid, l3_network_uuid, ip_version, ip, ip_in_long, netmask, gateway, \
                     used_for, vm_nic_uuid, create_date, last_op_date) VALUES ($1, $2, $3, 4, $4, $5, $6, $7, NULL, $8, $9, $9) \
                     ON CONFLICT (l3_network_uuid, ip_in_long) DO NOTHING",
                    &[
                        Val::from(ip_uuid),
                        Val::from(range.as_str()),
                        Val::from(l3),
                        Val::from(ip.as_str()),
                        Val::I(pick),
                        Val::from(netmask.as_str()),
                        Val::from(gateway.clone()),
                        Val::from(nic_uuid),
                        Val::I(now_ms()),
                    ],
                )
                .await?;
            if n == 1 {
                return Ok((ip, netmask, gateway));
            }
        }
    }
    let name: String = tx
        .fetch_optional("SELECT name FROM l3_network WHERE uuid = $1", &[Val::from(l3)])
        .await?
        .map(|r| r.try_get::<String, _>(0))
        .transpose()?
        .unwrap_or_default();
    Err(Error::Api(ErrorCode::new(
        L3_1000,
        format!(
            "IP allocator strategy[RandomIpAllocatorStrategy] failed, because no ip is available in this l3Network[name:{name}, uuid:{l3}]"
        ),
    )))
}

/// Take one given address of `l3` (a static IP): inserted into `used_ip`, whose UNIQUE
/// (l3, ipInLong) refuses it when someone else holds it.
async fn allocate_required_ip(
    tx: &mut WriteTx,
    l3: &str,
    nic_uuid: &str,
    ip_uuid: &str,
    ip: &str,
) -> Result<(String, String, Option<String>)> {
    let not_available = || {
        Error::Api(ErrorCode::new(
            L3_1000,
            format!("IP allocator strategy[RandomIpAllocatorStrategy] failed, because IP[{ip}] is not available"),
        ))
    };
    let n = i64::from(super::l3::ipv4(ip).ok_or_else(not_available)?);
    let Some(r) = tx
        .fetch_optional(
            "SELECT uuid, netmask, gateway FROM ip_range WHERE l3_network_uuid = $1 AND ip_version = 4 \
             AND start_ip_long <= $2 AND end_ip_long >= $2 ORDER BY create_date LIMIT 1",
            &[Val::from(l3), Val::I(n)],
        )
        .await?
    else {
        return Err(not_available());
    };
    let range: String = r.try_get(0)?;
    let netmask: String = r.try_get(1)?;
    let gateway: Option<String> = r.try_get(2)?;
    let inserted = tx
        .execute(
            "INSERT INTO used_ip (uuid, ip_range_uuid, l3_network_uuid, ip_version, ip, ip_in_long, netmask, gateway, \
             used_for, vm_nic_uuid, create_date, last_op_date) VALUES ($1, $2, $3, 4, $4, $5, $6, $7, NULL, $8, $9, $9) \
             ON CONFLICT (l3_network_uuid, ip_in_long) DO NOTHING",
            &[
                Val::from(ip_uuid),
                Val::from(range.as_str()),
                Val::from(l3),
                Val::from(ip),
                Val::I(n),
                Val::from(netmask.as_str()),
                Val::from(gateway.clone()),
                Val::from(nic_uuid),
                Val::I(now_ms()),
            ],
        )
        .await?;
    if inserted != 1 {
        return Err(not_available());
    }
    Ok((ip.to_string(), netmask, gateway))
}

/// NICs in device-id order, each with a unique `fa:` MAC (UNIQUE constraint, retried) and an
/// address of its L3 network.
fn nics_do<'a>(_app: &'a App, tx: &'a mut WriteTx, c: &'a mut Ctx) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        let internal_id: i64 = tx
            .fetch_optional("SELECT internal_id FROM vm_instance WHERE uuid = $1", &[Val::from(c.vm_uuid.as_str())])
            .await?
            .map(|r| r.try_get::<i64, _>(0))
            .transpose()?
            .unwrap_or(0);
        let hv: Option<String> = tx
            .fetch_optional("SELECT hypervisor_type FROM vm_instance WHERE uuid = $1", &[Val::from(c.vm_uuid.as_str())])
            .await?
            .map(|r| r.try_get::<Option<String>, _>(0))
            .transpose()?
            .flatten();
        let now = now_ms();
        for (device, nic) in c.nics.iter().enumerate() {
            let device = device as i64;
            let mut inserted = false;
            let tries = if nic.mac.is_some() { 1 } else { 32 };
            for _ in 0..tries {
                let n = tx
                    .execute(
                        "INSERT INTO vm_nic (uuid, vm_instance_uuid, l3_network_uuid, mac, hypervisor_type, ip_version, \
                         driver_type, internal_name, device_id, type, state, create_date, last_op_date, meta_data) \
                         VALUES ($1, $2, $3, $4, $5, 4, $9, $6, $7, 'VNIC', $10, $8, $8, $11) ON CONFLICT (mac) DO NOTHING",
                        &[
                            Val::from(nic.uuid.as_str()),
                            Val::from(c.vm_uuid.as_str()),
                            Val::from(nic.l3.as_str()),
                            Val::S(nic.mac.clone().unwrap_or_else(|| mac_for(device))),
                            Val::from(hv.clone()),
                            Val::S(format!("vnic{internal_id}.{device}")),
                            Val::I(device),
                            Val::I(now),
                            Val::from(nic.driver.as_deref().or(c.nic_driver.as_deref()).unwrap_or("virtio")),
                            Val::from(nic.state.as_deref().unwrap_or("enable")),
                            Val::from(nic.meta_data.clone()),
                        ],
                    )
                    .await?;
                if n == 1 {
                    inserted = true;
                    break;
                }
            }
            if let (false, Some(m)) = (inserted, &nic.mac) {
                return Err(Error::operr(format!("Duplicate mac address [{m}]")));
            }
            if !inserted {
                return Err(Error::code(
                    Code { code: "VM.1009", description: "Unable to allocate a mac address for vm's nic" },
                    format!("cannot find a free mac address for the nic[deviceId:{device}] of vm[uuid:{}]", c.vm_uuid),
                ));
            }
            let ip_uuid = new_uuid();
            let (ip, netmask, gateway) = allocate_ip(tx, &nic.l3, &nic.uuid, &ip_uuid, nic.ip.as_deref()).await?;
            tx.execute(
                "UPDATE vm_nic SET used_ip_uuid = $1, ip = $2, netmask = $3, gateway = $4 WHERE uuid = $5",
                &[
                    Val::from(ip_uuid.as_str()),
                    Val::from(ip),
                    Val::from(netmask),
                    Val::from(gateway),
                    Val::from(nic.uuid.as_str()),
                ],
            )
            .await?;
        }
        Ok(())
    })
}

fn nics_undo<'a>(_app: &'a App, tx: &'a mut WriteTx, c: &'a mut Ctx) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        for nic in &c.nics {
            tx.execute("DELETE FROM used_ip WHERE vm_nic_uuid = $1", &[Val::from(nic.uuid.as_str())]).await?;
            tx.execute("DELETE FROM vm_nic WHERE uuid = $1", &[Val::from(nic.uuid.as_str())]).await?;
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------
// Handlers

async fn create_vm(app: App, msg: Msg) -> Result<Reply> {
    let req: CreateVm = msg.parse()?;
    create(app, msg, req).await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FromSnapshot {
    volume_snapshot_uuid: String,
    primary_storage_uuid: Option<String>,
}

/// The snapshot a VM is made from: Ready and Enabled; its size is that of the snapshotted
/// volume (the snapshot row's own size when the volume is gone).
async fn snapshot_source(app: &App, uuid: &str) -> Result<SnapSrc> {
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
async fn create_vm_from_snapshot(app: App, msg: Msg) -> Result<Reply> {
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
fn canonical(v: &Value) -> Value {
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
fn request_fingerprint(msg: &Msg) -> String {
    let mut m = serde_json::Map::new();
    m.insert("api".into(), Value::String(msg.api.clone()));
    m.insert("fields".into(), Value::Object(msg.fields.clone()));
    canonical(&Value::Object(m)).to_string()
}

/// The VM a create with this resourceUuid already made, answered as it is now: on a replay
/// (after unwinding what the earlier attempt left unfinished) or when the request is the same
/// as the one that created it. Another request reusing the uuid is refused (SYS.1007).
async fn existing_vm(app: &App, msg: &Msg) -> Result<Option<Reply>> {
    let uuid = msg.resource_uuid();
    if msg.replay {
        saga::unwind_for_job(app, &msg.job_uuid).await?;
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

async fn create(app: App, msg: Msg, mut req: CreateVm) -> Result<Reply> {
    let uuid = msg.resource_uuid();
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

const STRATEGIES: &[&str] = &["InstantStart", "JustCreate", "CreateStopped"];
const PLATFORMS: &[&str] = &["Linux", "Windows", "Other", "Paravirtualization", "WindowsVirtio"];
const ARCHITECTURES: &[&str] = &["x86_64", "aarch64", "mips64el", "loongarch64"];

pub static APIS: &[ApiDef] = &[
    ApiDef {
        name: "CreateVmInstance",
        method: Method::Post,
        path: "/vm-instances",
        optional_paths: &[],
        body: Body::Params,
        kind: Kind::Async { timeout_ms: 12 * HOURS },
        auth: true,
        create: true,
        params: &[
            Param::str("name").required().max(255),
            Param::str("instanceOfferingUuid").resource(&INSTANCE_OFFERING),
            Param::int("cpuNum"),
            Param::int("memorySize"),
            Param::int("reservedMemorySize").range(0, i64::MAX),
            Param::str("imageUuid").resource(&IMAGE).no_empty_string(),
            Param::list("l3NetworkUuids").resource(&super::l3::L3_NETWORK),
            Param::str("vmNicParams"),
            Param::str("type").values(&["UserVm", "ApplianceVm"]),
            Param::str("rootDiskOfferingUuid").resource(&DISK_OFFERING),
            Param::int("rootDiskSize"),
            Param::list("dataDiskSizes"),
            Param::list("dataDiskOfferingUuids").resource(&DISK_OFFERING),
            Param::str("zoneUuid").resource(&ZONE),
            Param::str("clusterUuid").resource(&CLUSTER),
            Param::str("hostUuid").resource(&HOST),
            Param::str("primaryStorageUuidForRootVolume").resource(&PRIMARY_STORAGE),
            Param::str("description").max(2048),
            Param::str("defaultL3NetworkUuid"),
            Param::str("strategy").values(STRATEGIES),
            Param::list("rootVolumeSystemTags"),
            Param::list("dataVolumeSystemTags"),
            Param::map("dataVolumeSystemTagsOnIndex"),
            Param::list("sshKeyPairUuids").resource(&super::ssh_key::SSH_KEY_PAIR),
            Param::str("platform").values(PLATFORMS),
            Param::str("guestOsType").max(255),
            Param::str("architecture").max(32).values(ARCHITECTURES),
            Param::bool("virtio"),
            Param::objects("diskAOs"),
            Param::list("dataVolumeTemplateUuids").resource(&IMAGE),
            Param::map("devices"),
        ],
        tags: VM_TAGS,
        handler: Some(|a, m| boxed(create_vm(a, m))),
    },
    ApiDef {
        name: "CreateVmInstanceFromVolumeSnapshot",
        method: Method::Post,
        path: "/vm-instances/from/volume-snapshots/{volumeSnapshotUuid}",
        optional_paths: &[],
        body: Body::Params,
        kind: Kind::Async { timeout_ms: 72 * HOURS },
        auth: true,
        create: true,
        params: &[
            Param::str("name").required().max(255),
            Param::str("description").max(2048),
            Param::str("instanceOfferingUuid").resource(&INSTANCE_OFFERING),
            Param::int("cpuNum"),
            Param::int("memorySize"),
            Param::int("reservedMemorySize").range(0, i64::MAX),
            Param::list("l3NetworkUuids").resource(&super::l3::L3_NETWORK),
            Param::str("vmNicParams"),
            Param::str("type").values(&["UserVm", "ApplianceVm"]),
            Param::str("volumeSnapshotUuid").required().resource(&super::volume::VOLUME_SNAPSHOT),
            Param::str("platform").values(PLATFORMS),
            Param::str("zoneUuid").resource(&ZONE),
            Param::str("clusterUuid").resource(&CLUSTER),
            Param::str("hostUuid").resource(&HOST),
            Param::str("primaryStorageUuid").resource(&PRIMARY_STORAGE),
            Param::str("defaultL3NetworkUuid"),
            Param::str("strategy").values(&["InstantStart", "CreateStopped"]),
            Param::list("rootVolumeSystemTags"),
        ],
        tags: VM_TAGS,
        handler: Some(|a, m| boxed(create_vm_from_snapshot(a, m))),
    },
    ApiDef {
        name: "StartVmInstance",
        method: Method::Put,
        path: "/vm-instances/{uuid}/actions",
        optional_paths: &[],
        body: Body::Action,
        kind: Kind::Async { timeout_ms: crate::api::DEFAULT_API_TIMEOUT_MS },
        auth: true,
        create: false,
        params: &[
            Param::str("uuid").required().resource(&VM),
            Param::str("clusterUuid").resource(&CLUSTER),
            Param::str("hostUuid").resource(&HOST),
        ],
        tags: &[],
        handler: Some(|a, m| boxed(start_vm(a, m))),
    },
    ApiDef {
        name: "StopVmInstance",
        method: Method::Put,
        path: "/vm-instances/{uuid}/actions",
        optional_paths: &[],
        body: Body::Action,
        kind: Kind::Async { timeout_ms: crate::api::DEFAULT_API_TIMEOUT_MS },
        auth: true,
        create: false,
        params: &[
            Param::str("uuid").required().resource(&VM),
            Param::str("type").values(&["grace", "cold"]),
            Param::str("stopHA").values(&["true"]),
        ],
        tags: &[],
        handler: Some(|a, m| boxed(stop_vm(a, m))),
    },
    ApiDef {
        name: "RebootVmInstance",
        method: Method::Put,
        path: "/vm-instances/{uuid}/actions",
        optional_paths: &[],
        body: Body::Action,
        kind: Kind::Async { timeout_ms: crate::api::DEFAULT_API_TIMEOUT_MS },
        auth: true,
        create: false,
        params: &[Param::str("uuid").required().resource(&VM)],
        tags: &[],
        handler: Some(|a, m| boxed(reboot_vm(a, m))),
    },
    ApiDef {
        name: "DestroyVmInstance",
        method: Method::Delete,
        path: "/vm-instances/{uuid}",
        optional_paths: &[],
        body: Body::Query,
        kind: Kind::Async { timeout_ms: crate::api::DEFAULT_API_TIMEOUT_MS },
        auth: true,
        create: false,
        params: &[
            Param::str("uuid").required().resource(&VM).success_if_missing(),
            Param::str("deleteMode").values(&["Permissive", "Enforcing"]),
        ],
        tags: &[],
        handler: Some(|a, m| boxed(destroy_vm(a, m))),
    },
    ApiDef {
        name: "RecoverVmInstance",
        method: Method::Put,
        path: "/vm-instances/{uuid}/actions",
        optional_paths: &[],
        body: Body::Action,
        kind: Kind::Async { timeout_ms: crate::api::DEFAULT_API_TIMEOUT_MS },
        auth: true,
        create: false,
        params: &[Param::str("uuid").required().resource(&VM)],
        tags: &[],
        handler: Some(|a, m| boxed(recover_vm(a, m))),
    },
    ApiDef {
        name: "ExpungeVmInstance",
        method: Method::Put,
        path: "/vm-instances/{uuid}/actions",
        optional_paths: &[],
        body: Body::Action,
        kind: Kind::Async { timeout_ms: 3 * HOURS },
        auth: true,
        create: false,
        params: &[Param::str("uuid").required().resource(&VM)],
        tags: &[],
        handler: Some(|a, m| boxed(expunge_vm(a, m))),
    },
    ApiDef {
        name: "UpdateVmInstance",
        method: Method::Put,
        path: "/vm-instances/{uuid}/actions",
        optional_paths: &[],
        body: Body::Action,
        kind: Kind::Async { timeout_ms: crate::api::DEFAULT_API_TIMEOUT_MS },
        auth: true,
        create: false,
        params: &[
            Param::str("uuid").required().resource(&VM),
            Param::str("name").max(255),
            Param::str("description").max(2048),
            Param::str("state").values(&["Stopped", "Running"]),
            Param::str("defaultL3NetworkUuid").resource(&super::l3::L3_NETWORK),
            Param::str("platform").values(PLATFORMS),
            Param::int("cpuNum").range(1, 1024),
            Param::int("memorySize").range(1, i64::MAX),
            Param::int("reservedMemorySize").range(0, i64::MAX),
            Param::str("guestOsType").max(255),
        ],
        tags: &[],
        handler: Some(|a, m| boxed(update_vm(a, m))),
    },
    ApiDef {
        name: "QueryVmInstance",
        method: Method::Get,
        path: "/vm-instances",
        optional_paths: &["/vm-instances/{uuid}"],
        body: Body::Query,
        kind: Kind::Query(&VM),
        auth: true,
        create: false,
        params: &[],
        tags: &[],
        handler: None,
    },
    ApiDef {
        name: "QueryTpm",
        method: Method::Get,
        path: "/tpms",
        optional_paths: &["/tpms/{uuid}"],
        body: Body::Query,
        kind: Kind::Query(&TPM),
        auth: true,
        create: false,
        params: &[],
        tags: &[],
        handler: None,
    },
    ApiDef {
        name: "QueryVmNic",
        method: Method::Get,
        path: "/vm-instances/nics",
        optional_paths: &["/vm-instances/nics/{uuid}"],
        body: Body::Query,
        kind: Kind::Query(&VM_NIC),
        auth: true,
        create: false,
        params: &[],
        tags: &[],
        handler: None,
    },
];

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
    fn wrapper(self) -> Option<Code> {
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

    fn check(self, state: &str) -> Result<()> {
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

async fn vm_state(tx: &mut WriteTx, uuid: &str) -> Result<Option<String>> {
    Ok(tx
        .fetch_optional("SELECT state FROM vm_instance WHERE uuid = $1", &[Val::from(uuid)])
        .await?
        .map(|r| r.try_get::<String, _>(0))
        .transpose()?)
}

fn vm_not_found(uuid: &str) -> Error {
    Error::not_found(format!("vm instance[uuid:{uuid}] is not found"))
}

/// Move the VM from `from` to `to` (compare-and-set: a concurrent change makes it fail with
/// VM.1010 for the state found).
async fn move_state(tx: &mut WriteTx, op: VmOp, uuid: &str, from: &str, to: &str) -> Result<()> {
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

fn uuid_of(msg: &Msg) -> String {
    msg.str("uuid").unwrap_or_default().to_string()
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct StartVm {
    host_uuid: Option<String>,
    cluster_uuid: Option<String>,
}

async fn start_vm(app: App, msg: Msg) -> Result<Reply> {
    let uuid = uuid_of(&msg);
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
            let mut tx = app.db.begin_write().await?;
            start_stopped(&app, &mut tx, &uuid, &req).await.map_err(wrap)?;
            tx.commit().await?;
        }
    }
    reply(&app, &uuid).await
}

/// Start a Stopped VM in one transaction: a host (the designated one, else the cluster's, the
/// last host first) whose cluster reaches the root volume's primary storage and every NIC's
/// L2 network, its capacity reserved atomically; addresses for NICs that lost theirs.
async fn start_stopped(app: &App, tx: &mut WriteTx, uuid: &str, req: &StartVm) -> Result<()> {
    move_state(tx, VmOp::Start, uuid, "Stopped", "Starting").await?;
    let vm = tx
        .fetch_optional(
            "SELECT cpu_num, memory_size, last_host_uuid, root_volume_uuid, hypervisor_type, allocator_strategy \
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
    vals.push(Val::from(last.unwrap_or_default()));
    let least = if strategy.as_deref().unwrap_or("LeastVmPreferred").contains("LeastVmPreferred") {
        "(SELECT COUNT(*) FROM vm_instance o WHERE o.host_uuid = h.uuid), "
    } else {
        ""
    };
    let order = format!("CASE WHEN h.uuid = ${} THEN 0 ELSE 1 END, {least}random()", vals.len());
    let hosts = tx
        .fetch_all(
            &format!("SELECT h.uuid, h.cluster_uuid, h.zone_uuid FROM host h WHERE {filter} ORDER BY {order}"),
            &vals,
        )
        .await?;
    let mut chosen = None;
    for h in hosts {
        let host: String = h.try_get(0)?;
        if super::host::reserve(app, tx, &host, cpu, mem).await? {
            chosen = Some((host, h.try_get::<String, _>(1)?, h.try_get::<String, _>(2)?));
            break;
        }
    }
    let Some((host, cluster, zone)) = chosen else {
        return Err(host_alloc_error(format!("no host having cpu[{cpu}], memory[{mem} bytes] found")));
    };
    tx.execute(
        "UPDATE vm_instance SET state = 'Running', host_uuid = $1, last_host_uuid = $1, cluster_uuid = $2, zone_uuid = $3, \
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
    // On a KVM host the agent starts QEMU (a failure rolls the whole start back).
    kvm::start_existing(tx, uuid, &host).await?;
    Ok(())
}

async fn stop_vm(app: App, msg: Msg) -> Result<Reply> {
    let uuid = uuid_of(&msg);
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

async fn reboot_vm(app: App, msg: Msg) -> Result<Reply> {
    let uuid = uuid_of(&msg);
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

/// DestroyVmInstance with upstream's default deletion policy Delay: Destroyed, host capacity
/// and IP addresses given back (NICs stay, without address), the root volume marked Deleted
/// (its primary-storage capacity is held until expunge), data volumes detached. A Created VM
/// (nothing allocated) is removed at once (policy DBOnly); a Destroyed VM is a success.
async fn destroy_vm(app: App, msg: Msg) -> Result<Reply> {
    let uuid = uuid_of(&msg);
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
    // A guest on a KVM host is destroyed by its agent first (outside the write transaction).
    drop(tx);
    kvm::destroy_on_host(&app.db, &uuid).await?;
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
    tx.commit().await?;
    Ok(Reply::empty())
}

/// The rows of a VM besides its `vm_instance` row: NICs and their addresses, CD-ROMs, its
/// root volume (capacity back to the primary storage), tags, SSH key refs, owner records.
async fn remove_vm_rows(tx: &mut WriteTx, uuid: &str) -> Result<()> {
    let v = Val::from(uuid);
    tx.execute(
        "DELETE FROM used_ip WHERE vm_nic_uuid IN (SELECT uuid FROM vm_nic WHERE vm_instance_uuid = $1)",
        std::slice::from_ref(&v),
    )
    .await?;
    let nics = tx.fetch_all("SELECT uuid FROM vm_nic WHERE vm_instance_uuid = $1", std::slice::from_ref(&v)).await?;
    for n in nics {
        let nic: String = n.try_get(0)?;
        super::tag::delete_for_resource(tx, &nic).await?;
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
        tx.execute("DELETE FROM volume_snapshot WHERE volume_uuid = $1", &[Val::from(vol.as_str())]).await?;
        super::tag::delete_for_resource(tx, &vol).await?;
        super::disown(tx, &vol).await?;
    }
    let tpms = tx.fetch_all("SELECT uuid FROM tpm WHERE vm_instance_uuid = $1", std::slice::from_ref(&v)).await?;
    for r in tpms {
        let t: String = r.try_get(0)?;
        tx.execute("DELETE FROM tpm WHERE uuid = $1", &[Val::from(t.as_str())]).await?;
        super::tag::delete_for_resource(tx, &t).await?;
        super::disown(tx, &t).await?;
    }
    tx.execute("DELETE FROM ssh_key_pair_ref WHERE resource_uuid = $1", &[v]).await?;
    super::tag::delete_for_resource(tx, uuid).await?;
    super::disown(tx, uuid).await?;
    Ok(())
}

async fn recover_vm(app: App, msg: Msg) -> Result<Reply> {
    let uuid = uuid_of(&msg);
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

async fn expunge_vm(app: App, msg: Msg) -> Result<Reply> {
    let uuid = uuid_of(&msg);
    // the root volume file on a KVM host goes once the rows are gone
    let file = kvm::expunge_target(&app.db, &uuid).await?;
    let mut tx = app.db.begin_write().await?;
    let Some(state) = vm_state(&mut tx, &uuid).await? else {
        // expunged already (a replayed job)
        return Ok(Reply::empty());
    };
    VmOp::Expunge.check(&state)?;
    let n = tx
        .execute("DELETE FROM vm_instance WHERE uuid = $1 AND state = 'Destroyed'", &[Val::from(uuid.as_str())])
        .await?;
    if n != 1 {
        let now = vm_state(&mut tx, &uuid).await?.unwrap_or_default();
        return Err(VmOp::Expunge.refused(&now));
    }
    remove_vm_rows(&mut tx, &uuid).await?;
    tx.commit().await?;
    if let Some((agent, path)) = file {
        kvm::delete_file(&agent, &path).await;
    }
    Ok(Reply::empty())
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct UpdateVm {
    name: Option<String>,
    description: Option<String>,
    state: Option<String>,
    default_l3_network_uuid: Option<String>,
    platform: Option<String>,
    cpu_num: Option<i64>,
    memory_size: Option<i64>,
    reserved_memory_size: Option<i64>,
    guest_os_type: Option<String>,
}

async fn update_vm(app: App, msg: Msg) -> Result<Reply> {
    let uuid = uuid_of(&msg);
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
